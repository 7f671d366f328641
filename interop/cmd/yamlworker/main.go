// Command yamlworker is a Go Machinery worker configured only by a YAML file,
// loaded with Machinery's own config.NewFromYaml (v1 or v2): the proof that one
// file serves a Go worker and a Python worker alike (README, "AMQP").
//
// It registers "add" (sum of int64s, as the Python side also has it),
// "sleep_ms" (sleeps that many milliseconds, returns them) and
// "go_who" (returns "go-<flavour>"), consumes the file's default_queue and
// prints "ready" on stdout once it consumes (Machinery's log goes to stderr).
// The v2 flavour builds the AMQP broker and the AMQP backend (or go-redis for a
// redis:// result_backend) from the file;
// v1 uses its URL factories, so any broker/backend the file names works.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/RichardKnop/machinery/v1"
	v1config "github.com/RichardKnop/machinery/v1/config"
	v2 "github.com/RichardKnop/machinery/v2"
	v2amqpbackend "github.com/RichardKnop/machinery/v2/backends/amqp"
	v2iface "github.com/RichardKnop/machinery/v2/backends/iface"
	v2redisbackend "github.com/RichardKnop/machinery/v2/backends/redis"
	v2amqpbroker "github.com/RichardKnop/machinery/v2/brokers/amqp"
	v2config "github.com/RichardKnop/machinery/v2/config"
	v2eagerlock "github.com/RichardKnop/machinery/v2/locks/eager"

	"github.com/machinery-compat/interop/internal/mc"
)

type worker interface {
	LaunchAsync(chan<- error)
	Quit()
}

func add(args ...int64) (int64, error) {
	var sum int64
	for _, a := range args {
		sum += a
	}
	return sum, nil
}

// sleepMs sleeps ms milliseconds and returns ms (a task that takes a while).
func sleepMs(ms int64) (int64, error) {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return ms, nil
}

func main() {
	path := flag.String("config", "", "YAML file (Machinery's format)")
	flavour := flag.String("flavour", "v2", "v1 | v2")
	concurrency := flag.Int("concurrency", 2, "worker concurrency")
	flag.Parse()
	mc.LogToStderr("yamlworker ") // stdout carries only "ready"
	who := func() (string, error) { return "go-" + *flavour, nil }
	tasks := map[string]interface{}{"add": add, "go_who": who, "sleep_ms": sleepMs}

	var w worker
	switch *flavour {
	case "v1":
		cnf, err := v1config.NewFromYaml(*path, false)
		if err != nil {
			fail("v1 config: %v", err)
		}
		server, err := v1.NewServer(cnf)
		if err != nil {
			fail("v1 server: %v", err)
		}
		if err := server.RegisterTasks(tasks); err != nil {
			fail("v1 register: %v", err)
		}
		w = server.NewWorker("yamlworker-v1", *concurrency)
	case "v2":
		cnf, err := v2config.NewFromYaml(*path, false)
		if err != nil {
			fail("v2 config: %v", err)
		}
		server := v2.NewServer(cnf, v2amqpbroker.New(cnf), v2backend(cnf), v2eagerlock.New())
		if err := server.RegisterTasks(tasks); err != nil {
			fail("v2 register: %v", err)
		}
		w = server.NewWorker("yamlworker-v2", *concurrency)
	default:
		fail("unknown flavour %q", *flavour)
	}

	// Machinery handles SIGINT/SIGTERM itself (quits gracefully, then reports
	// ErrWorkerQuitGracefully here).
	errs := make(chan error, 1)
	w.LaunchAsync(errs)
	fmt.Println("ready")
	if err := <-errs; err != nil && err != v1.ErrWorkerQuitGracefully && err != v2.ErrWorkerQuitGracefully {
		fail("worker: %v", err)
	}
}

// v2backend is the AMQP backend, or go-redis for a redis://host:port/db URL.
func v2backend(cnf *v2config.Config) v2iface.Backend {
	if !strings.HasPrefix(cnf.ResultBackend, "redis://") {
		return v2amqpbackend.New(cnf)
	}
	u, err := url.Parse(cnf.ResultBackend)
	if err != nil {
		fail("result_backend: %v", err)
	}
	db := 0
	if p := strings.Trim(u.Path, "/"); p != "" {
		if db, err = strconv.Atoi(p); err != nil {
			fail("result_backend db: %v", err)
		}
	}
	return v2redisbackend.NewGR(cnf, []string{u.Host}, db)
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "yamlworker: "+format+"\n", a...)
	os.Exit(1)
}
