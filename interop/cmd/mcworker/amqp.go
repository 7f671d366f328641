package main

import (
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/machinery-compat/interop/internal/mc"
)

// consumerProbe watches the consumer count of the worker's queue on its own
// connection (passive queue.declare), so mcworker can print "ready" only once
// Machinery's consumer is attached: Launch declares, binds and consumes
// asynchronously, and a task published before the queue exists and is bound
// would be dropped by the exchange.
type consumerProbe struct {
	conn   *amqp.Connection
	ch     *amqp.Channel
	queue  string
	before int
}

func newConsumerProbe(url, queue string, timeout time.Duration) (*consumerProbe, error) {
	var conn *amqp.Connection
	var err error
	deadline := time.Now().Add(timeout)
	for {
		conn, err = amqp.Dial(url)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("dial: %v", err)
	}
	p := &consumerProbe{conn: conn, queue: queue}
	if p.before, err = p.consumers(); err != nil {
		p.before = 0 // queue not declared yet
	}
	return p, nil
}

// consumers is the queue's consumer count (passive declare); a missing queue
// closes the channel, so a fresh channel is opened per call.
func (p *consumerProbe) consumers() (int, error) {
	if p.ch != nil {
		p.ch.Close()
	}
	ch, err := p.conn.Channel()
	if err != nil {
		return 0, err
	}
	p.ch = ch
	q, err := ch.QueueDeclarePassive(p.queue, true, false, false, false, nil)
	if err != nil {
		p.ch = nil
		return 0, err
	}
	return q.Consumers, nil
}

// WaitForMore waits until the queue has more consumers than before Launch.
func (p *consumerProbe) WaitForMore(timeout time.Duration, launched <-chan error) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := p.consumers()
		if err == nil && n > p.before {
			return nil
		}
		select {
		case lerr := <-launched:
			return fmt.Errorf("Launch returned before consuming: %v", lerr)
		default:
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no new consumer")
			}
			return fmt.Errorf("queue %q: %v after %s", p.queue, err, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *consumerProbe) Close() {
	if p.ch != nil {
		p.ch.Close()
	}
	p.conn.Close()
}

// amqpEvent is the "amqp" member of the ready line (null when no AMQP URL).
func amqpEvent(used bool, o mc.AMQPOptions) interface{} {
	if !used {
		return nil
	}
	return map[string]interface{}{
		"exchange": o.Exchange, "exchange_type": o.ExchangeType, "binding_key": o.BindingKey,
		"prefetch_count": o.PrefetchCount, "queue_declare_args": o.QueueDeclareArgs,
		"queue_binding_args": o.QueueBindingArgs, "auto_delete": o.AutoDelete,
		"delayed_queue": o.DelayedQueue,
	}
}
