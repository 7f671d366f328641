// Command mcworker is a Go Machinery worker for the interop suite.
//
// It consumes tasks from a Redis, AMQP (RabbitMQ) or SQS broker with Machinery
// v1 (URL factories, redigo for a single redis:// URL) or Machinery v2 (the
// AMQP, SQS and DynamoDB constructors, Redis with redigo or go-redis), and prints one
// JSON line per processed task run on stdout (see README.md). Machinery's own
// log output goes to stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/machinery-compat/interop/internal/jsonl"
	"github.com/machinery-compat/interop/internal/mc"
	"github.com/machinery-compat/interop/internal/rurl"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		flavour     = flag.String("flavour", mc.FlavourV2Redigo, "v1 | v2-redigo | v2-goredis | v2 (no Redis URL)")
		broker      = flag.String("broker", "redis://127.0.0.1:6379/0", "broker URL (redis://[user:pw@]host:port/db, amqp://user:pw@host:port/vhost or SQS http(s)://host[:port]/<account>)")
		backend     = flag.String("backend", "", "result backend URL (redis://…, amqp://…, https://dynamodb…; default: same as -broker)")
		counters    = flag.String("counters", "", "Redis URL for the fail_n_times/retry_later counters (default: -broker or -backend, whichever is redis://)")
		queue       = flag.String("queue", "machinery_tasks", "queue to consume; also the DefaultQueue")
		concurrency = flag.Int("concurrency", 4, "worker concurrency")
		tag         = flag.String("tag", "", "consumer tag (default go-<flavour>-<pid>)")
		delayedPoll = flag.Int("delayed-poll-ms", 500, "Redis DelayedTasksPollPeriod in ms")
		normalPoll  = flag.Int("normal-poll-ms", 1000, "Redis NormalTasksPollPeriod in ms (BLPOP timeout)")
		expire      = flag.Int("results-expire-in", 3600, "ResultsExpireIn in seconds")
		quitTimeout = flag.Duration("quit-timeout", 30*time.Second, "how long to wait for running tasks on SIGINT/SIGTERM")
		amqpOpts    = mc.AMQPFlags(flag.CommandLine)
		awsOpts     = mc.AWSFlags(flag.CommandLine)
		redisOpts   = mc.RedisFlags(flag.CommandLine)
	)
	flag.Parse()
	if *backend == "" {
		*backend = *broker
	}
	if *counters == "" {
		for _, u := range []string{*broker, *backend} {
			if mc.Scheme(u) == "redis" {
				*counters = u
				break
			}
		}
	}
	pid := os.Getpid()
	if *tag == "" {
		*tag = fmt.Sprintf("go-%s-%d", *flavour, pid)
	}
	out := jsonl.New(os.Stdout)
	fatal := func(format string, a ...interface{}) int {
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintln(os.Stderr, "mcworker:", msg)
		out.Emit(map[string]interface{}{"event": "fatal", "worker": "go", "flavour": *flavour, "tag": *tag, "pid": pid, "error": msg})
		return 1
	}

	mc.LogToStderr("mcworker ")
	ao, err := amqpOpts(*queue)
	if err != nil {
		return fatal("%v", err)
	}
	aws := awsOpts()
	// Machinery never creates SQS queues or DynamoDB tables (and only logs
	// when they are missing): check them first.
	if mc.Scheme(*broker) == "sqs" {
		if err := mc.CheckSQSQueue(aws, *broker, *queue, 10*time.Second); err != nil {
			return fatal("%v", err)
		}
	}
	if mc.Scheme(*backend) == "dynamodb" {
		if err := mc.CheckDynamoDBTables(aws, 10*time.Second); err != nil {
			return fatal("%v", err)
		}
	}
	srv, err := mc.New(mc.Options{
		Flavour: *flavour, Broker: *broker, Backend: *backend, Queue: *queue,
		DelayedPollMs: *delayedPoll, NormalPollMs: *normalPoll, ResultsExpireIn: *expire,
		AMQP: ao, AWS: aws, Redis: redisOpts(),
	})
	if err != nil {
		return fatal("server: %v", err)
	}

	// The counters Redis (the broker's Redis unless -counters says otherwise);
	// answering PING is also the start-up check of a Redis broker.
	var rdb *goredis.Client
	if *counters != "" {
		cu, err := rurl.Parse(*counters)
		if err != nil {
			return fatal("counters URL: %v", err)
		}
		rdb = goredis.NewClient(&goredis.Options{Addr: cu.Host, Username: cu.Username, Password: cu.Password, DB: cu.DB})
		defer rdb.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			err = rdb.Ping(context.Background()).Err()
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return fatal("redis ping %s: %v", cu.Host, err)
		}
	}
	// AMQP: note the queue's consumers before Launch, to report ready only
	// once this worker's consumer is attached (Launch connects asynchronously).
	var amqpProbe *consumerProbe
	if mc.Scheme(*broker) == "amqp" {
		first := *broker
		if ao.Separator != "" {
			first = strings.Split(first, ao.Separator)[0]
		}
		if amqpProbe, err = newConsumerProbe(first, *queue, 10*time.Second); err != nil {
			return fatal("amqp %v", err)
		}
		defer amqpProbe.Close()
	}

	e := &env{srv: srv, rdb: rdb, out: out, flavour: *flavour, tag: *tag, pid: pid}
	tasks := e.taskMap()
	if err := srv.RegisterTasks(tasks); err != nil {
		return fatal("register tasks: %v", err)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)

	w := srv.NewWorker(*tag, *concurrency)
	// Machinery calls the error handler for final task failures (instead of
	// logging them) and for broker errors that make it restart consuming.
	w.SetErrorHandler(func(err error) {
		msg := "<nil>"
		if err != nil {
			msg = err.Error()
		}
		fmt.Fprintln(os.Stderr, "mcworker: error handler:", msg)
		out.Emit(map[string]interface{}{"event": "error_handler", "worker": "go", "flavour": *flavour, "tag": *tag, "pid": pid, "error": msg})
	})
	done := make(chan error, 1)
	go func() { done <- w.Launch() }()
	if amqpProbe != nil {
		if err := amqpProbe.WaitForMore(20*time.Second, done); err != nil {
			return fatal("amqp consumer: %v", err)
		}
	}

	sqsEv, dynamoEv := mc.AWSEvent(aws, *broker, *backend)
	names := make([]string, 0, len(tasks))
	for n := range tasks {
		names = append(names, n)
	}
	out.Emit(map[string]interface{}{
		"event": "ready", "worker": "go", "flavour": *flavour, "tag": *tag, "pid": pid,
		"queue": *queue, "concurrency": *concurrency, "broker": *broker, "backend": *backend,
		"counters": *counters, "amqp": amqpEvent(mc.Scheme(*broker) == "amqp" || mc.Scheme(*backend) == "amqp", ao),
		"sqs": sqsEv, "dynamodb": dynamoEv,
		"machinery_version": mc.MachineryVersion(*flavour), "tasks": len(names),
	})

	stopped := func(reason string, err error) {
		ev := map[string]interface{}{"event": "stopped", "worker": "go", "flavour": *flavour, "tag": *tag, "pid": pid, "reason": reason, "error": ""}
		if err != nil {
			ev["error"] = err.Error()
		}
		out.Emit(ev)
	}

	select {
	case err := <-done:
		stopped("launch returned", err)
		if err != nil {
			return 1
		}
		return 0
	case s := <-sigs:
		out.Emit(map[string]interface{}{"event": "stopping", "worker": "go", "flavour": *flavour, "tag": *tag, "pid": pid, "signal": s.String()})
		// Quit stops fetching and waits for running tasks. Exit once both Quit
		// and Launch returned, as Machinery's own signal handling does: on
		// SQS, Launch returns as soon as fetching stopped, while Quit still
		// waits for the running tasks.
		quitDone := make(chan struct{})
		go func() { w.Quit(); close(quitDone) }()
		var launchErr error
		deadline := time.After(*quitTimeout)
		for done != nil || quitDone != nil {
			select {
			case launchErr = <-done:
				done = nil
			case <-quitDone:
				quitDone = nil
			case s2 := <-sigs:
				stopped("second signal "+s2.String(), nil)
				return 1
			case <-deadline:
				stopped("quit timeout", nil)
				return 1
			}
		}
		stopped("signal "+s.String(), launchErr)
		return 0
	}
}
