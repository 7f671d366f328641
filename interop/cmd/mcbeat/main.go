// Command mcbeat is a Go Machinery v2 scheduler: it registers one periodic task with
// Machinery's own RegisterPeriodicTask (or Chain/Group/Chord) on a server built with the
// go-redis broker and backend and Machinery's Redis lock (locks/redis), and lets Machinery's
// cron fire it until SIGINT/SIGTERM or -duration. The Python periodic tests run it next to
// Python schedulers to check that exactly one of them sends each period.
//
// The lock is Machinery's, wrapped only to report each attempt on stdout as a JSON line:
//
//	{"event":"ready","key":"machinery_lock_mcbeat<name><spec>","pid":123}
//	{"event":"lock","key":"...","value":1700000000999999999,"acquired":true,"at":1700000000001234567}
//	{"event":"stop"}
//
// Machinery's key contains filepath.Base(os.Args[0]) ("mcbeat" unless renamed): Python
// schedulers must be given that program name to contend on the same key.
//
// Flags: -broker/-backend redis://host:port/db, -queue, -spec, -name, -task (the task name
// sent), -arg (a string argument, to tell senders apart), -kind task|chain|group|chord,
// -lock redis://host:port/db (default: the broker's), -lock-retries (Machinery's retries,
// default 3), -duration (0: until a signal).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/RichardKnop/machinery/v2"
	redisbackend "github.com/RichardKnop/machinery/v2/backends/redis"
	redisbroker "github.com/RichardKnop/machinery/v2/brokers/redis"
	"github.com/RichardKnop/machinery/v2/config"
	redislock "github.com/RichardKnop/machinery/v2/locks/redis"
	"github.com/RichardKnop/machinery/v2/tasks"

	"github.com/machinery-compat/interop/internal/jsonl"
	"github.com/machinery-compat/interop/internal/mc"
	"github.com/machinery-compat/interop/internal/rurl"
)

var out = jsonl.New(os.Stdout)

// reportingLock is Machinery's Redis lock; it only reports what LockWithRetries answered.
type reportingLock struct {
	inner redislock.Lock
}

func (l reportingLock) LockWithRetries(key string, value int64) error {
	err := l.inner.LockWithRetries(key, value)
	out.Emit(map[string]interface{}{"event": "lock", "key": key, "value": value,
		"acquired": err == nil, "at": time.Now().UnixNano()})
	return err
}

func (l reportingLock) Lock(key string, value int64) error { return l.inner.Lock(key, value) }

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "mcbeat: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	broker := flag.String("broker", "redis://127.0.0.1:6379/0", "Redis broker URL")
	backend := flag.String("backend", "", "Redis result backend URL (default: the broker's)")
	queue := flag.String("queue", "machinery_tasks", "DefaultQueue")
	spec := flag.String("spec", "@every 1s", "cron spec")
	name := flag.String("name", "tick", "periodic task name (part of the lock key)")
	task := flag.String("task", "tick", "name of the task sent")
	arg := flag.String("arg", "go", "a string argument of the task sent (\"\": none)")
	kind := flag.String("kind", "task", "task, chain, group or chord")
	lockURL := flag.String("lock", "", "Redis URL of the lock (default: the broker's)")
	retries := flag.Int("lock-retries", 3, "Machinery's lock retries (attempts - 1)")
	duration := flag.Duration("duration", 0, "stop after this long (0: at SIGINT/SIGTERM)")
	flag.Parse()
	mc.LogToStderr("mcbeat ")

	if *backend == "" {
		*backend = *broker
	}
	if *lockURL == "" {
		*lockURL = *broker
	}
	bu, err := rurl.Parse(*broker)
	if err != nil {
		fail("broker: %v", err)
	}
	ru, err := rurl.Parse(*backend)
	if err != nil {
		fail("backend: %v", err)
	}
	lu, err := rurl.Parse(*lockURL)
	if err != nil {
		fail("lock: %v", err)
	}
	cnf := &config.Config{
		Broker:          *broker,
		ResultBackend:   *backend,
		DefaultQueue:    *queue,
		ResultsExpireIn: 3600,
		NoUnixSignals:   true,
		Redis: &config.RedisConfig{
			MaxIdle: 10, MaxActive: 100, IdleTimeout: 300, Wait: true,
			ReadTimeout: 15, WriteTimeout: 15, ConnectTimeout: 15,
			NormalTasksPollPeriod: 1000, DelayedTasksPollPeriod: 500,
		},
	}
	br := redisbroker.NewGR(cnf, []string{bu.GoRedisAddr()}, bu.DB)
	be := redisbackend.NewGR(cnf, []string{ru.GoRedisAddr()}, ru.DB)
	lock := reportingLock{redislock.New(cnf, []string{lu.GoRedisAddr()}, lu.DB, *retries)}
	server := machinery.NewServer(cnf, br, be, lock)

	sig := func() *tasks.Signature {
		s := &tasks.Signature{Name: *task}
		if *arg != "" {
			s.Args = []tasks.Arg{{Type: "string", Value: *arg}}
		}
		return s
	}
	switch *kind {
	case "task":
		err = server.RegisterPeriodicTask(*spec, *name, sig())
	case "chain":
		err = server.RegisterPeriodicChain(*spec, *name, sig(), sig())
	case "group":
		err = server.RegisterPeriodicGroup(*spec, *name, 0, sig(), sig())
	case "chord":
		err = server.RegisterPeriodicChord(*spec, *name, 0, sig(), sig(), sig())
	default:
		fail("unknown -kind %q", *kind)
	}
	if err != nil {
		fail("register: %v", err)
	}
	key := "machinery_lock_" + filepath.Base(os.Args[0]) + *name + *spec
	out.Emit(map[string]interface{}{"event": "ready", "key": key, "pid": os.Getpid()})

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	if *duration > 0 {
		select {
		case <-stop:
		case <-time.After(*duration):
		}
	} else {
		<-stop
	}
	out.Emit(map[string]string{"event": "stop"})
}
