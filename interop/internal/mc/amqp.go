package mc

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Machinery's defaults for the amqp section (config.defaultCnf).
const (
	DefaultAMQPExchange      = "machinery_exchange"
	DefaultAMQPExchangeType  = "direct"
	DefaultAMQPPrefetchCount = 3
)

// AMQPOptions mirrors Machinery's config.AMQPConfig (same fields, v1 and v2).
type AMQPOptions struct {
	Exchange         string
	ExchangeType     string
	BindingKey       string
	PrefetchCount    int
	QueueDeclareArgs map[string]interface{}
	QueueBindingArgs map[string]interface{}
	AutoDelete       bool
	DelayedQueue     string
	// Separator is Machinery's MultipleBrokerSeparator (a top-level config
	// key): the broker URL is split on it and the URLs are tried in order.
	Separator string
}

// AMQPFlags registers the -amqp-* flags on fs. After fs.Parse, call the
// returned function with the -queue value: it yields the options (binding key
// defaulted to the queue name) or a flag error.
func AMQPFlags(fs *flag.FlagSet) func(queue string) (AMQPOptions, error) {
	var (
		exchange     = fs.String("amqp-exchange", DefaultAMQPExchange, "AMQP.Exchange")
		exchangeType = fs.String("amqp-exchange-type", DefaultAMQPExchangeType, "AMQP.ExchangeType (direct|fanout|topic|headers)")
		bindingKey   = fs.String("amqp-binding-key", "", "AMQP.BindingKey (default: the -queue value)")
		prefetch     = fs.Int("amqp-prefetch", DefaultAMQPPrefetchCount, "AMQP.PrefetchCount")
		queueArgs    = fs.String("amqp-queue-args", "", `AMQP.QueueDeclareArgs as a JSON object, e.g. {"x-max-priority":10}`)
		bindingArgs  = fs.String("amqp-binding-args", "", "AMQP.QueueBindingArgs as a JSON object")
		autoDelete   = fs.Bool("amqp-auto-delete", false, "AMQP.AutoDelete (delay queues)")
		delayedQueue = fs.String("amqp-delayed-queue", "", "AMQP.DelayedQueue")
		separator    = fs.String("amqp-separator", "", "MultipleBrokerSeparator: -broker holds several AMQP URLs joined by it, tried in order")
	)
	return func(queue string) (AMQPOptions, error) {
		o := AMQPOptions{
			Exchange: *exchange, ExchangeType: *exchangeType, BindingKey: *bindingKey,
			PrefetchCount: *prefetch, AutoDelete: *autoDelete, DelayedQueue: *delayedQueue,
			Separator: *separator,
		}
		if o.BindingKey == "" {
			o.BindingKey = queue
		}
		var err error
		if o.QueueDeclareArgs, err = ParseTable(*queueArgs); err != nil {
			return o, fmt.Errorf("-amqp-queue-args: %v", err)
		}
		if o.QueueBindingArgs, err = ParseTable(*bindingArgs); err != nil {
			return o, fmt.Errorf("-amqp-binding-args: %v", err)
		}
		return o, nil
	}
}

// ParseTable decodes a JSON object into the Go values a YAML config would
// give Machinery: integers become Go int (AMQP field type 'I', as
// `x-max-priority: 10` from YAML does) or int64 ('l') when they do not fit in
// 32 bits, other numbers float64, nested objects amqp-compatible maps.
// "" and "null" give nil (no arguments).
func ParseTable(text string) (map[string]interface{}, error) {
	text = strings.TrimSpace(text)
	if text == "" || text == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(text)))
	dec.UseNumber()
	var m map[string]interface{}
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	out, err := tableValue(m)
	if err != nil {
		return nil, err
	}
	return out.(map[string]interface{}), nil
}

// tableValue converts a UseNumber-decoded JSON value into AMQP field values.
func tableValue(v interface{}) (interface{}, error) {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			if i >= math.MinInt32 && i <= math.MaxInt32 {
				return int(i), nil
			}
			return i, nil
		}
		f, err := x.Float64()
		if err != nil {
			return nil, err
		}
		return f, nil
	case map[string]interface{}:
		out := make(map[string]interface{}, len(x))
		for k, e := range x {
			c, err := tableValue(e)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, e := range x {
			c, err := tableValue(e)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	}
	return v, nil
}

// AMQPHeaders converts Signature headers decoded with UseNumber into values
// amqp091-go can put into a message's headers table (it refuses json.Number
// and plain nested maps): integers → int (or int64 beyond 32 bits), other
// numbers → float64, objects → amqp.Table. Machinery publishes
// amqp.Table(signature.Headers) as the message headers property.
func AMQPHeaders(h map[string]interface{}) map[string]interface{} {
	if h == nil {
		return nil
	}
	out := make(map[string]interface{}, len(h))
	for k, v := range h {
		out[k] = amqpValue(v)
	}
	return out
}

func amqpValue(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		c, err := tableValue(x)
		if err != nil {
			return x.String()
		}
		return c
	case map[string]interface{}:
		t := amqp.Table{}
		for k, e := range x {
			t[k] = amqpValue(e)
		}
		return t
	case []interface{}:
		out := make([]interface{}, len(x))
		for i, e := range x {
			out[i] = amqpValue(e)
		}
		return out
	}
	return v
}
