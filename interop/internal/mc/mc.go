// Package mc hides the differences between Machinery v1 (via its URL
// factories) and Machinery v2 (explicit constructors: Redis with redigo or
// go-redis, AMQP, SQS, DynamoDB) behind one small interface, so the interop
// programs can run the same code against every flavour and broker/backend
// combination. One file per service: amqp.go, aws.go (SQS and DynamoDB).
package mc

import (
	"context"
	"encoding/json"
	"fmt"
	stdlog "log"
	"os"
	"reflect"
	"runtime/debug"
	"strings"
	"time"

	v1log "github.com/RichardKnop/machinery/v1/log"
	v2log "github.com/RichardKnop/machinery/v2/log"
)

// Flavours understood by New.
const (
	FlavourV1        = "v1"
	FlavourV2Redigo  = "v2-redigo"
	FlavourV2GoRedis = "v2-goredis"
	// FlavourV2 is Machinery v2 without any Redis component (AMQP, SQS,
	// DynamoDB); with a redis:// URL it is refused (say which client).
	FlavourV2 = "v2"
)

// Flavours lists the valid -flavour values.
var Flavours = []string{FlavourV1, FlavourV2Redigo, FlavourV2GoRedis, FlavourV2}

// Options configures a server.
type Options struct {
	Flavour         string
	Broker          string // redis://host:port/db, amqp://user:pw@host:port/vhost or an SQS URL (http(s)://host/<account>)
	Backend         string // redis://…, amqp://… or https://dynamodb… (DynamoDBBackendURL)
	Queue           string // DefaultQueue
	DelayedPollMs   int    // Redis.DelayedTasksPollPeriod
	NormalPollMs    int    // Redis.NormalTasksPollPeriod
	ResultsExpireIn int    // seconds
	AMQP            AMQPOptions
	AWS             AWSOptions
	Redis           RedisOptions // cluster / sentinel (redis_topology.go)
}

// Arg is a flavour-neutral tasks.Arg.
type Arg struct {
	Name  string
	Type  string
	Value interface{}
}

// Spec is a flavour-neutral tasks.Signature (same fields).
type Spec struct {
	UUID                        string
	Name                        string
	RoutingKey                  string
	ETA                         *time.Time
	GroupUUID                   string
	GroupTaskCount              int
	Args                        []Arg
	Headers                     map[string]interface{}
	Priority                    uint8
	Immutable                   bool
	RetryCount                  int
	RetryTimeout                int
	OnSuccess                   []*Spec
	OnError                     []*Spec
	ChordCallback               *Spec
	BrokerMessageGroupId        string //nolint:revive // Machinery's spelling
	StopTaskDeletionOnError     bool
	IgnoreWhenTaskNotRegistered bool
}

// SigInfo is what a running task learns about its own signature.
type SigInfo struct {
	UUID         string
	Name         string
	RoutingKey   string
	GroupUUID    string
	RetryCount   int
	RetryTimeout int
	ETA          *time.Time
	// RawArgs is json.Marshal(signature.Args) as the worker holds them
	// (numbers are json.Number, so literals are re-emitted verbatim).
	RawArgs json.RawMessage
}

// Result is a flavour-neutral *result.AsyncResult.
type Result interface {
	GetWithTimeout(timeout, sleep time.Duration) ([]reflect.Value, error)
	// State returns the last polled task state ("" if none was read yet).
	State() string
}

// Worker is a flavour-neutral *machinery.Worker.
type Worker interface {
	Launch() error
	Quit()
	SetErrorHandler(func(err error))
}

// Server is a flavour-neutral *machinery.Server.
type Server interface {
	Flavour() string
	RegisterTasks(map[string]interface{}) error
	NewWorker(tag string, concurrency int) Worker
	// SendTask publishes with server.SendTask (PENDING state first).
	SendTask(*Spec) (uuid string, res Result, err error)
	ReadResult(uuid string) Result
	// SigInfo extracts the signature Machinery put into a task's context.
	SigInfo(ctx context.Context) *SigInfo
	// RetryLater builds this flavour's tasks.ErrRetryTaskLater.
	RetryLater(msg string, d time.Duration) error
}

// New builds a Server for o.Flavour.
func New(o Options) (Server, error) {
	if o.Queue == "" {
		o.Queue = "machinery_tasks"
	}
	if o.DelayedPollMs <= 0 {
		o.DelayedPollMs = 500
	}
	if o.NormalPollMs <= 0 {
		o.NormalPollMs = 1000
	}
	if o.ResultsExpireIn <= 0 {
		o.ResultsExpireIn = 3600
	}
	if s := Scheme(o.Broker); s == "" || s == "dynamodb" || s == "memcache" || s == "mongodb" {
		return nil, fmt.Errorf("broker: want a redis://, amqp:// or SQS (http(s)://host/<account>) URL, got %q", o.Broker)
	}
	if s := Scheme(o.Backend); s == "" || s == "sqs" || s == "pubsub" {
		return nil, fmt.Errorf("backend: want a redis://, amqp://, memcache:// or https://dynamodb… URL, got %q", o.Backend)
	}
	if err := o.AWS.fill(o.Broker); err != nil {
		return nil, err
	}
	if o.AMQP.Exchange == "" && o.AMQP.ExchangeType == "" && o.AMQP.BindingKey == "" {
		o.AMQP = AMQPOptions{Exchange: DefaultAMQPExchange, ExchangeType: DefaultAMQPExchangeType,
			BindingKey: o.Queue, PrefetchCount: DefaultAMQPPrefetchCount}
	}
	switch o.Flavour {
	case FlavourV1:
		return newV1(o)
	case FlavourV2Redigo, FlavourV2GoRedis, FlavourV2:
		return newV2(o)
	}
	return nil, fmt.Errorf("unknown flavour %q (want one of %v)", o.Flavour, Flavours)
}

// Scheme classifies a broker/backend URL: "redis", "amqp", "sqs", "dynamodb", "memcache", "pubsub", "mongodb" or "".
func Scheme(url string) string {
	switch {
	case strings.HasPrefix(url, "redis://"), strings.HasPrefix(url, "rediss://"):
		return "redis"
	case strings.HasPrefix(url, "amqp://"), strings.HasPrefix(url, "amqps://"):
		return "amqp"
	case strings.HasPrefix(url, "memcache://"):
		return "memcache"
	case strings.HasPrefix(url, "mongodb://"), strings.HasPrefix(url, "mongodb+srv://"):
		return "mongodb"
	case strings.HasPrefix(url, "gcppubsub://"):
		return "pubsub"
	case IsDynamoDBURL(url):
		return "dynamodb"
	case IsSQSURL(url):
		return "sqs"
	}
	return ""
}

// LogToStderr sends Machinery's own log output (which goes to stdout by
// default for DEBUG/INFO/WARNING) to stderr, keeping stdout for JSON lines.
func LogToStderr(prefix string) {
	flags := stdlog.LstdFlags | stdlog.Lmicroseconds
	v1log.Set(stdlog.New(os.Stderr, prefix+"[machinery-v1] ", flags))
	v2log.Set(stdlog.New(os.Stderr, prefix+"[machinery-v2] ", flags))
}

func marshalArgs(args interface{}) json.RawMessage {
	b, err := json.Marshal(args)
	if err != nil {
		b, _ = json.Marshal(fmt.Sprintf("<unmarshalable: %v>", err))
	}
	return b
}

// MachineryVersion returns the version of the Machinery module that
// implements flavour f in this binary (from the embedded build info).
func MachineryVersion(f string) string {
	want := "github.com/RichardKnop/machinery/v2"
	if f == FlavourV1 {
		want = "github.com/RichardKnop/machinery"
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path == want {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}
