package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/machinery-compat/interop/internal/jsonl"
	"github.com/machinery-compat/interop/internal/mc"
)

// env is shared by all task closures.
type env struct {
	srv     mc.Server
	rdb     *goredis.Client // counters for fail_n_times / retry_later (-counters); nil: none
	out     *jsonl.Writer
	flavour string
	tag     string
	pid     int
}

// taskEvent is the stdout line printed for every task run.
type taskEvent struct {
	Event        string        `json:"event"` // always "task"
	Worker       string        `json:"worker"`
	Flavour      string        `json:"flavour"`
	Tag          string        `json:"tag"`
	PID          int           `json:"pid"`
	Name         string        `json:"name"`
	UUID         string        `json:"uuid"`
	RoutingKey   string        `json:"routing_key"`
	GroupUUID    string        `json:"group_uuid"`
	RetryCount   int           `json:"retry_count"`
	RetryTimeout int           `json:"retry_timeout"`
	ETA          *time.Time    `json:"eta"`
	RawArgs      interface{}   `json:"raw_args"`
	Args         []interface{} `json:"args"`
	ArgTypes     []string      `json:"arg_types"`
	Results      []interface{} `json:"results"`
	ResultTypes  []string      `json:"result_types"`
	Error        string        `json:"error"`
	Panicked     bool          `json:"panicked"`
	TS           string        `json:"ts"`
}

// record prints one task line. results == nil means "no results" (error).
func (e *env) record(ctx context.Context, name string, args, results []interface{}, err error, panicked bool) {
	ev := taskEvent{
		Event: "task", Worker: "go", Flavour: e.flavour, Tag: e.tag, PID: e.pid,
		Name: name, Panicked: panicked, TS: time.Now().UTC().Format(time.RFC3339Nano),
		Args: []interface{}{}, ArgTypes: []string{},
	}
	if si := e.srv.SigInfo(ctx); si != nil {
		ev.Name, ev.UUID, ev.RoutingKey, ev.GroupUUID = si.Name, si.UUID, si.RoutingKey, si.GroupUUID
		ev.RetryCount, ev.RetryTimeout, ev.ETA = si.RetryCount, si.RetryTimeout, si.ETA
		ev.RawArgs = si.RawArgs
	}
	for _, a := range args {
		ev.Args = append(ev.Args, jsonl.Value(a))
		ev.ArgTypes = append(ev.ArgTypes, fmt.Sprintf("%T", a))
	}
	if results != nil {
		ev.Results, ev.ResultTypes = []interface{}{}, []string{}
		for _, r := range results {
			ev.Results = append(ev.Results, jsonl.Value(r))
			ev.ResultTypes = append(ev.ResultTypes, fmt.Sprintf("%T", r))
		}
	}
	if err != nil {
		ev.Error = err.Error()
	}
	e.out.Emit(ev)
}

// incr increments a counter in the -counters Redis.
func (e *env) incr(key string) (int64, error) {
	if e.rdb == nil {
		return 0, errors.New("mcworker has no -counters Redis")
	}
	return e.rdb.Incr(context.Background(), key).Result()
}

func ints(xs []int64) []interface{} {
	out := make([]interface{}, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// echo returns a task that returns its single argument unchanged.
func echo[T any](e *env, name string) func(context.Context, T) (T, error) {
	return func(ctx context.Context, v T) (T, error) {
		e.record(ctx, name, []interface{}{v}, []interface{}{v}, nil, false)
		return v, nil
	}
}

// taskMap returns every registered task, by name.
func (e *env) taskMap() map[string]interface{} {
	m := map[string]interface{}{
		"add": func(ctx context.Context, xs ...int64) (int64, error) {
			var s int64
			for _, x := range xs {
				s += x
			}
			e.record(ctx, "add", ints(xs), []interface{}{s}, nil, false)
			return s, nil
		},
		"multiply": func(ctx context.Context, xs ...int64) (int64, error) {
			p := int64(1)
			for _, x := range xs {
				p *= x
			}
			e.record(ctx, "multiply", ints(xs), []interface{}{p}, nil, false)
			return p, nil
		},
		"concat": func(ctx context.Context, xs ...string) (string, error) {
			args := make([]interface{}, len(xs))
			for i, x := range xs {
				args[i] = x
			}
			s := strings.Join(xs, "")
			e.record(ctx, "concat", args, []interface{}{s}, nil, false)
			return s, nil
		},
		"multi_return": func(ctx context.Context) (int64, string, bool, error) {
			e.record(ctx, "multi_return", nil, []interface{}{int64(42), "answer", true}, nil, false)
			return 42, "answer", true, nil
		},
		"only_error": func(ctx context.Context) error {
			e.record(ctx, "only_error", nil, []interface{}{}, nil, false)
			return nil
		},
		"fail": func(ctx context.Context, msg string) (int64, error) {
			err := errors.New(msg)
			e.record(ctx, "fail", []interface{}{msg}, nil, err, false)
			return 0, err
		},
		// panic_task panics with an error value (errors.New(msg)); Machinery's
		// recover turns it into the task error msg.
		"panic_task": func(ctx context.Context, msg string) (int64, error) {
			err := errors.New(msg)
			e.record(ctx, "panic_task", []interface{}{msg}, nil, err, true)
			panic(err)
		},
		"fail_n_times": func(ctx context.Context, key string, n int64) (int64, error) {
			k, err := e.incr("fail_n_times:" + key)
			if err == nil && k <= n {
				err = fmt.Errorf("attempt %d failed", k)
			}
			if err != nil {
				e.record(ctx, "fail_n_times", []interface{}{key, n}, nil, err, false)
				return 0, err
			}
			e.record(ctx, "fail_n_times", []interface{}{key, n}, []interface{}{k}, nil, false)
			return k, nil
		},
		"retry_later": func(ctx context.Context, key string, delayMs int64) (string, error) {
			k, err := e.incr("retry_later:" + key)
			if err == nil && k == 1 {
				err = e.srv.RetryLater("later", time.Duration(delayMs)*time.Millisecond)
			}
			if err != nil {
				e.record(ctx, "retry_later", []interface{}{key, delayMs}, nil, err, false)
				return "", err
			}
			e.record(ctx, "retry_later", []interface{}{key, delayMs}, []interface{}{"done"}, nil, false)
			return "done", nil
		},
		"sleep": func(ctx context.Context, ms int64) (int64, error) {
			time.Sleep(time.Duration(ms) * time.Millisecond)
			e.record(ctx, "sleep", []interface{}{ms}, []interface{}{ms}, nil, false)
			return ms, nil
		},
	}
	// One echo task per Machinery argument type ("echo_" + type name).
	m["echo_bool"] = echo[bool](e, "echo_bool")
	m["echo_int"] = echo[int](e, "echo_int")
	m["echo_int8"] = echo[int8](e, "echo_int8")
	m["echo_int16"] = echo[int16](e, "echo_int16")
	m["echo_int32"] = echo[int32](e, "echo_int32")
	m["echo_int64"] = echo[int64](e, "echo_int64")
	m["echo_uint"] = echo[uint](e, "echo_uint")
	m["echo_uint8"] = echo[uint8](e, "echo_uint8")
	m["echo_uint16"] = echo[uint16](e, "echo_uint16")
	m["echo_uint32"] = echo[uint32](e, "echo_uint32")
	m["echo_uint64"] = echo[uint64](e, "echo_uint64")
	m["echo_float32"] = echo[float32](e, "echo_float32")
	m["echo_float64"] = echo[float64](e, "echo_float64")
	m["echo_string"] = echo[string](e, "echo_string")
	m["echo_[]bool"] = echo[[]bool](e, "echo_[]bool")
	m["echo_[]int"] = echo[[]int](e, "echo_[]int")
	m["echo_[]int8"] = echo[[]int8](e, "echo_[]int8")
	m["echo_[]int16"] = echo[[]int16](e, "echo_[]int16")
	m["echo_[]int32"] = echo[[]int32](e, "echo_[]int32")
	m["echo_[]int64"] = echo[[]int64](e, "echo_[]int64")
	m["echo_[]uint"] = echo[[]uint](e, "echo_[]uint")
	m["echo_[]uint8"] = echo[[]uint8](e, "echo_[]uint8")
	m["echo_[]uint16"] = echo[[]uint16](e, "echo_[]uint16")
	m["echo_[]uint32"] = echo[[]uint32](e, "echo_[]uint32")
	m["echo_[]uint64"] = echo[[]uint64](e, "echo_[]uint64")
	m["echo_[]float32"] = echo[[]float32](e, "echo_[]float32")
	m["echo_[]float64"] = echo[[]float64](e, "echo_[]float64")
	m["echo_[]byte"] = echo[[]byte](e, "echo_[]byte")
	m["echo_[]string"] = echo[[]string](e, "echo_[]string")
	return m
}
