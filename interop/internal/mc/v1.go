package mc

import (
	"context"
	"fmt"
	"reflect"
	"time"

	machinery "github.com/RichardKnop/machinery/v1"
	"github.com/RichardKnop/machinery/v1/backends/result"
	"github.com/RichardKnop/machinery/v1/config"
	"github.com/RichardKnop/machinery/v1/tasks"
)

// v1Server uses Machinery v1's NewServer, i.e. its BrokerFactory /
// BackendFactory / LockFactory driven by the URLs: amqp:// selects the AMQP
// broker/backend, a single redis://host:port/db URL the redigo Redis ones, an
// http(s) URL the SQS broker and https://dynamodb… the DynamoDB backend (with
// the SDK clients of aws.go).
type v1Server struct {
	srv  *machinery.Server
	amqp bool // AMQP broker: headers converted for amqp091 (AMQPHeaders)
}

func newV1(o Options) (Server, error) {
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
	configureV1Redis(cnf, o)
	if err := configureV1AWS(cnf, o); err != nil {
		return nil, err
	}
	s, err := machinery.NewServer(cnf)
	if err != nil {
		return nil, err
	}
	if s.GetBackend() == nil {
		// v1 NewServer silently ignores backend factory errors.
		_, berr := machinery.BackendFactory(cnf)
		return nil, fmt.Errorf("v1 backend factory failed: %v", berr)
	}
	if Scheme(o.Backend) == "memcache" {
		setMemcacheClient(s.GetBackend(), o.Backend) // -memcache-timeout (memcache.go)
	}
	return &v1Server{srv: s, amqp: Scheme(o.Broker) == "amqp"}, nil
}

func (s *v1Server) Flavour() string { return FlavourV1 }

func (s *v1Server) RegisterTasks(m map[string]interface{}) error { return s.srv.RegisterTasks(m) }

func (s *v1Server) NewWorker(tag string, concurrency int) Worker {
	return s.srv.NewWorker(tag, concurrency)
}

func (s *v1Server) SendTask(sp *Spec) (string, Result, error) {
	sig := toV1(sp)
	if s.amqp {
		sig.Headers = tasks.Headers(AMQPHeaders(sig.Headers))
	}
	r, err := s.srv.SendTask(sig)
	if err != nil {
		return sig.UUID, nil, err
	}
	return sig.UUID, v1Result{r}, nil
}

func (s *v1Server) ReadResult(uuid string) Result {
	return v1Result{result.NewAsyncResult(&tasks.Signature{UUID: uuid}, s.srv.GetBackend())}
}

func (s *v1Server) SigInfo(ctx context.Context) *SigInfo {
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

func (s *v1Server) RetryLater(msg string, d time.Duration) error {
	return tasks.NewErrRetryTaskLater(msg, d)
}

type v1Result struct{ r *result.AsyncResult }

func (r v1Result) GetWithTimeout(timeout, sleep time.Duration) ([]reflect.Value, error) {
	return r.r.GetWithTimeout(timeout, sleep)
}

func (r v1Result) State() string {
	if st := r.r.GetState(); st != nil {
		return st.State
	}
	return ""
}

func toV1(sp *Spec) *tasks.Signature {
	if sp == nil {
		return nil
	}
	sig := &tasks.Signature{
		UUID: sp.UUID, Name: sp.Name, RoutingKey: sp.RoutingKey, ETA: sp.ETA,
		GroupUUID: sp.GroupUUID, GroupTaskCount: sp.GroupTaskCount,
		Priority: sp.Priority, Immutable: sp.Immutable,
		RetryCount: sp.RetryCount, RetryTimeout: sp.RetryTimeout,
		ChordCallback:               toV1(sp.ChordCallback),
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
		sig.OnSuccess = append(sig.OnSuccess, toV1(c))
	}
	for _, c := range sp.OnError {
		sig.OnError = append(sig.OnError, toV1(c))
	}
	return sig
}
