package mc

import (
	"context"
	"fmt"
	"reflect"
	"time"

	machinery "github.com/RichardKnop/machinery/v2"
	amqpbackend "github.com/RichardKnop/machinery/v2/backends/amqp"
	backendiface "github.com/RichardKnop/machinery/v2/backends/iface"
	redisbackend "github.com/RichardKnop/machinery/v2/backends/redis"
	"github.com/RichardKnop/machinery/v2/backends/result"
	amqpbroker "github.com/RichardKnop/machinery/v2/brokers/amqp"
	brokeriface "github.com/RichardKnop/machinery/v2/brokers/iface"
	redisbroker "github.com/RichardKnop/machinery/v2/brokers/redis"
	"github.com/RichardKnop/machinery/v2/config"
	eagerlock "github.com/RichardKnop/machinery/v2/locks/eager"
	"github.com/RichardKnop/machinery/v2/tasks"

	"github.com/machinery-compat/interop/internal/rurl"
)

type v2Server struct {
	flavour string
	srv     *machinery.Server
	amqp    bool // AMQP broker: headers converted for amqp091 (AMQPHeaders)
}

func newV2(o Options) (Server, error) {
	cnf := &config.Config{
		Broker:          o.Broker,
		ResultBackend:   o.Backend,
		DefaultQueue:    o.Queue,
		ResultsExpireIn: o.ResultsExpireIn,
		NoUnixSignals:   true, // mcworker handles SIGINT/SIGTERM itself

		MultipleBrokerSeparator: o.AMQP.Separator,
		Redis: &config.RedisConfig{
			MaxIdle:                10,
			MaxActive:              100,
			IdleTimeout:            300,
			Wait:                   true,
			ReadTimeout:            15,
			WriteTimeout:           15,
			ConnectTimeout:         15,
			NormalTasksPollPeriod:  o.NormalPollMs,
			DelayedTasksPollPeriod: o.DelayedPollMs,
		},
		// The AMQP backend needs cnf.AMQP even when the broker is Redis (and
		// the reverse), as in Machinery's own defaults.
		AMQP: &config.AMQPConfig{
			Exchange:         o.AMQP.Exchange,
			ExchangeType:     o.AMQP.ExchangeType,
			BindingKey:       o.AMQP.BindingKey,
			PrefetchCount:    o.AMQP.PrefetchCount,
			QueueDeclareArgs: config.QueueDeclareArgs(o.AMQP.QueueDeclareArgs),
			QueueBindingArgs: config.QueueBindingArgs(o.AMQP.QueueBindingArgs),
			AutoDelete:       o.AMQP.AutoDelete,
			DelayedQueue:     o.AMQP.DelayedQueue,
		},
	}
	configureV2AWS(cnf, o)
	configureV2Redis(cnf, o)
	redisClient := func(what string) error {
		if o.Flavour == FlavourV2 {
			return fmt.Errorf("%s is a redis:// URL: use -flavour v2-redigo or v2-goredis to pick the Redis client", what)
		}
		return nil
	}
	var br brokeriface.Broker
	switch Scheme(o.Broker) {
	case "amqp":
		br = amqpbroker.New(cnf)
	case "sqs":
		var err error
		if br, err = newV2SQSBroker(cnf); err != nil {
			return nil, fmt.Errorf("broker: %v", err)
		}
	case "pubsub":
		var err error
		if br, err = newV2PubSubBroker(cnf, o.Broker); err != nil {
			return nil, fmt.Errorf("broker: %v", err)
		}
	case "redis":
		if err := redisClient("broker"); err != nil {
			return nil, err
		}
		if o.Flavour == FlavourV2GoRedis {
			addrs, db, err := GoRedisAddrs(o.Broker)
			if err != nil {
				return nil, fmt.Errorf("broker: %v", err)
			}
			br = redisbroker.NewGR(cnf, addrs, db)
		} else {
			u, err := rurl.Parse(o.Broker)
			if err != nil {
				return nil, fmt.Errorf("broker: %v", err)
			}
			br = redisbroker.New(cnf, u.Host, u.Username, u.Password, "", u.DB)
		}
	}
	var be backendiface.Backend
	switch Scheme(o.Backend) {
	case "amqp":
		be = amqpbackend.New(cnf)
	case "dynamodb":
		var err error
		if be, err = newV2DynamoDBBackend(cnf); err != nil {
			return nil, fmt.Errorf("backend: %v", err)
		}
	case "memcache":
		be = newV2MemcacheBackend(cnf, o.Backend)
	case "mongodb":
		be = newV2MongoBackend(cnf)
	case "redis":
		if err := redisClient("backend"); err != nil {
			return nil, err
		}
		if o.Flavour == FlavourV2GoRedis {
			addrs, db, err := GoRedisAddrs(o.Backend)
			if err != nil {
				return nil, fmt.Errorf("backend: %v", err)
			}
			be = redisbackend.NewGR(cnf, addrs, db)
		} else {
			u, err := rurl.Parse(o.Backend)
			if err != nil {
				return nil, fmt.Errorf("backend: %v", err)
			}
			be = redisbackend.New(cnf, u.Host, u.Username, u.Password, "", u.DB)
		}
	}
	s := machinery.NewServer(cnf, br, be, eagerlock.New())
	return &v2Server{flavour: o.Flavour, srv: s, amqp: Scheme(o.Broker) == "amqp"}, nil
}

func (s *v2Server) Flavour() string { return s.flavour }

func (s *v2Server) RegisterTasks(m map[string]interface{}) error { return s.srv.RegisterTasks(m) }

func (s *v2Server) NewWorker(tag string, concurrency int) Worker {
	return s.srv.NewWorker(tag, concurrency)
}

func (s *v2Server) SendTask(sp *Spec) (string, Result, error) {
	sig := toV2(sp)
	if s.amqp {
		sig.Headers = tasks.Headers(AMQPHeaders(sig.Headers))
	}
	r, err := s.srv.SendTask(sig)
	if err != nil {
		return sig.UUID, nil, err
	}
	return sig.UUID, v2Result{r}, nil
}

func (s *v2Server) ReadResult(uuid string) Result {
	return v2Result{result.NewAsyncResult(&tasks.Signature{UUID: uuid}, s.srv.GetBackend())}
}

func (s *v2Server) SigInfo(ctx context.Context) *SigInfo {
	sig := tasks.SignatureFromContext(ctx)
	if sig == nil {
		return nil
	}
	return &SigInfo{
		UUID: sig.UUID, Name: sig.Name, RoutingKey: sig.RoutingKey, GroupUUID: sig.GroupUUID,
		RetryCount: sig.RetryCount, RetryTimeout: sig.RetryTimeout, ETA: sig.ETA,
		RawArgs: marshalArgs(sig.Args),
	}
}

func (s *v2Server) RetryLater(msg string, d time.Duration) error {
	return tasks.NewErrRetryTaskLater(msg, d)
}

type v2Result struct{ r *result.AsyncResult }

func (r v2Result) GetWithTimeout(timeout, sleep time.Duration) ([]reflect.Value, error) {
	return r.r.GetWithTimeout(timeout, sleep)
}

func (r v2Result) State() string {
	if st := r.r.GetState(); st != nil {
		return st.State
	}
	return ""
}

func toV2(sp *Spec) *tasks.Signature {
	if sp == nil {
		return nil
	}
	sig := &tasks.Signature{
		UUID: sp.UUID, Name: sp.Name, RoutingKey: sp.RoutingKey, ETA: sp.ETA,
		GroupUUID: sp.GroupUUID, GroupTaskCount: sp.GroupTaskCount,
		Priority: sp.Priority, Immutable: sp.Immutable,
		RetryCount: sp.RetryCount, RetryTimeout: sp.RetryTimeout,
		ChordCallback:               toV2(sp.ChordCallback),
		BrokerMessageGroupId:        sp.BrokerMessageGroupId,
		StopTaskDeletionOnError:     sp.StopTaskDeletionOnError,
		IgnoreWhenTaskNotRegistered: sp.IgnoreWhenTaskNotRegistered,
	}
	if sp.Args != nil {
		sig.Args = make([]tasks.Arg, len(sp.Args))
		for i, a := range sp.Args {
			sig.Args[i] = tasks.Arg{Name: a.Name, Type: a.Type, Value: a.Value}
		}
	}
	if sp.Headers != nil {
		sig.Headers = tasks.Headers(sp.Headers)
	}
	for _, c := range sp.OnSuccess {
		sig.OnSuccess = append(sig.OnSuccess, toV2(c))
	}
	for _, c := range sp.OnError {
		sig.OnError = append(sig.OnError, toV2(c))
	}
	return sig
}
