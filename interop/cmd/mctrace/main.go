// Command mctrace is a Go Machinery v2 worker for the tracing interop test: redigo Redis
// broker and backend, and an opentracing global tracer, which is what Machinery's v2/tracing
// package injects into and extracts from Signature.Headers:
//
//	-tracer otel    the OpenTelemetry bridge (go.opentelemetry.io/otel/bridge/opentracing) over
//	                the OpenTelemetry SDK, W3C trace context (traceparent) and baggage
//	-tracer jaeger  jaeger-client-go (Machinery's own example), uber-trace-id headers
//
// It is its own Go module (the bridge needs a newer go directive than ../../go.mod), so
// ../../build.sh does not build it: `go build -o ../../bin/mctrace .` here does.
//
// One JSON line per event on stdout:
//
//	{"event":"ready"}
//	{"event":"pre_task","task":N,"uuid":U,"headers":{…},"extracted":{"trace_id":…,"span_id":…},"extract_error":""}
//	    what the global tracer extracts from the headers, as Machinery's StartSpanFromHeaders does
//	{"event":"task_span","task":N,"uuid":U,"trace_id":…,"span_id":…,"parent":{…}|null,"links":[{…}]}
//	    the span Machinery started for the task (read inside the task from its context)
//	{"event":"span","name":"SendTask","kind":"producer","trace_id":…,"span_id":…,"parent":{…}|null}
//	    every span the tracer reports (Machinery finishes its SendTask spans, never its task spans)
//
// Trace ids are 32 hex digits and span ids 16 with both tracers.
//
// Tasks: go_relay(next string, queue string) sends task `next` (no arguments) to `queue`
// with SendTaskWithContext(ctx, …), continuing the trace, and returns "relayed";
// go_add(a, b int64) returns a+b (use it with an OnSuccess callback: Machinery's worker sends
// callbacks with SendTask, i.e. context.Background()).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	machinery "github.com/RichardKnop/machinery/v2"
	redisbackend "github.com/RichardKnop/machinery/v2/backends/redis"
	redisbroker "github.com/RichardKnop/machinery/v2/brokers/redis"
	"github.com/RichardKnop/machinery/v2/config"
	eagerlock "github.com/RichardKnop/machinery/v2/locks/eager"
	"github.com/RichardKnop/machinery/v2/tasks"
	opentracing "github.com/opentracing/opentracing-go"
	"go.opentelemetry.io/otel"
	otelbridge "go.opentelemetry.io/otel/bridge/opentracing"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	jaeger "github.com/uber/jaeger-client-go"
)

var (
	outMu      sync.Mutex
	server     *machinery.Server
	tracerName string
)

func emit(v map[string]interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(fmt.Sprintf(`{"event":"error","error":%q}`, err.Error()))
	}
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(b, '\n'))
}

func ref(sc trace.SpanContext) interface{} {
	if !sc.IsValid() {
		return nil
	}
	return map[string]interface{}{"trace_id": sc.TraceID().String(), "span_id": sc.SpanID().String(), "remote": sc.IsRemote()}
}

// jsonExporter prints every exported span as one JSON line.
type jsonExporter struct{}

func (jsonExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	for _, s := range spans {
		links := []interface{}{}
		for _, l := range s.Links() {
			links = append(links, ref(l.SpanContext))
		}
		emit(map[string]interface{}{
			"event": "span", "name": s.Name(), "kind": s.SpanKind().String(),
			"trace_id": s.SpanContext().TraceID().String(), "span_id": s.SpanContext().SpanID().String(),
			"parent": ref(s.Parent()), "links": links,
		})
	}
	return nil
}

func (jsonExporter) Shutdown(context.Context) error { return nil }

func jaegerTraceID(t jaeger.TraceID) string { return fmt.Sprintf("%016x%016x", t.High, t.Low) }

func jaegerRef(sc jaeger.SpanContext) interface{} {
	if !sc.IsValid() {
		return nil
	}
	return map[string]interface{}{"trace_id": jaegerTraceID(sc.TraceID()), "span_id": sc.SpanID().String()}
}

// jaegerReporter prints every finished jaeger span as one JSON line.
type jaegerReporter struct{}

func (jaegerReporter) Report(s *jaeger.Span) {
	sc := s.SpanContext()
	var parent interface{}
	if sc.ParentID() != 0 {
		parent = map[string]interface{}{"trace_id": jaegerTraceID(sc.TraceID()), "span_id": sc.ParentID().String()}
	}
	kind := ""
	if v, ok := s.Tags()["span.kind"]; ok {
		kind = fmt.Sprint(v)
	}
	emit(map[string]interface{}{
		"event": "span", "name": s.OperationName(), "kind": kind,
		"trace_id": jaegerTraceID(sc.TraceID()), "span_id": sc.SpanID().String(),
		"parent": parent, "links": []interface{}{},
	})
}

func (jaegerReporter) Close() {}

// taskSpan logs the span Machinery put into the task's context.
func taskSpan(ctx context.Context, name string) {
	ev := map[string]interface{}{"event": "task_span", "task": name}
	if sig := tasks.SignatureFromContext(ctx); sig != nil {
		ev["uuid"] = sig.UUID
	}
	if tracerName == "jaeger" {
		if js, ok := opentracing.SpanFromContext(ctx).(*jaeger.Span); ok {
			sc := js.SpanContext()
			ev["trace_id"] = jaegerTraceID(sc.TraceID())
			ev["span_id"] = sc.SpanID().String()
			ev["parent"] = nil
			if sc.ParentID() != 0 {
				ev["parent"] = map[string]interface{}{"trace_id": jaegerTraceID(sc.TraceID()), "span_id": sc.ParentID().String()}
			}
			refs := []interface{}{}
			for _, r := range js.References() {
				ref := map[string]interface{}{"type": int(r.Type)}
				if rc, ok := r.ReferencedContext.(jaeger.SpanContext); ok {
					ref["span"] = jaegerRef(rc)
				}
				refs = append(refs, ref)
			}
			ev["references"] = refs
			ev["links"] = []interface{}{}
		} else {
			ev["error"] = fmt.Sprintf("the task context holds a %T", opentracing.SpanFromContext(ctx))
		}
		emit(ev)
		return
	}
	span := trace.SpanFromContext(ctx)
	sc := span.SpanContext()
	ev["trace_id"] = sc.TraceID().String()
	ev["span_id"] = sc.SpanID().String()
	if ro, ok := span.(sdktrace.ReadOnlySpan); ok {
		ev["parent"] = ref(ro.Parent())
		links := []interface{}{}
		for _, l := range ro.Links() {
			links = append(links, ref(l.SpanContext))
		}
		ev["links"] = links
	} else {
		ev["error"] = fmt.Sprintf("the task context holds a %T, not an SDK span", span)
	}
	emit(ev)
}

func goRelay(ctx context.Context, next, queue string) (string, error) {
	taskSpan(ctx, "go_relay")
	sig := &tasks.Signature{Name: next, RoutingKey: queue}
	if _, err := server.SendTaskWithContext(ctx, sig); err != nil {
		return "", err
	}
	return "relayed", nil
}

func goAdd(ctx context.Context, a, b int64) (int64, error) {
	taskSpan(ctx, "go_add")
	return a + b, nil
}

func main() { os.Exit(run()) }

func run() int {
	var (
		broker = flag.String("broker", "redis://127.0.0.1:6379/0", "redis://host:port/db (broker and backend)")
		queue  = flag.String("queue", "trace_go", "queue to consume; also the DefaultQueue")
		which  = flag.String("tracer", "otel", "otel (OpenTelemetry bridge, W3C) | jaeger (jaeger-client-go, uber-trace-id)")
	)
	flag.Parse()
	tracerName = *which
	u, err := url.Parse(*broker)
	if err != nil || u.Scheme != "redis" {
		fmt.Fprintf(os.Stderr, "mctrace: -broker must be a redis:// URL: %q\n", *broker)
		return 2
	}
	db := 0
	if p := strings.TrimPrefix(u.Path, "/"); p != "" {
		if db, err = strconv.Atoi(p); err != nil {
			fmt.Fprintf(os.Stderr, "mctrace: bad db in %q\n", *broker)
			return 2
		}
	}
	password, _ := u.User.Password()

	switch tracerName {
	case "otel":
		provider := sdktrace.NewTracerProvider(sdktrace.WithSyncer(jsonExporter{}),
			sdktrace.WithSampler(sdktrace.AlwaysSample()))
		defer provider.Shutdown(context.Background())
		propagator := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
		otel.SetTextMapPropagator(propagator)
		bridge, wrapped := otelbridge.NewTracerPair(provider.Tracer("mctrace"))
		bridge.SetTextMapPropagator(propagator)
		otel.SetTracerProvider(wrapped)
		opentracing.SetGlobalTracer(bridge)
	case "jaeger":
		tracer, closer := jaeger.NewTracer("mctrace", jaeger.NewConstSampler(true), jaegerReporter{},
			jaeger.TracerOptions.Gen128Bit(true))
		defer closer.Close()
		opentracing.SetGlobalTracer(tracer)
	default:
		fmt.Fprintf(os.Stderr, "mctrace: -tracer must be otel or jaeger, not %q\n", tracerName)
		return 2
	}

	cnf := &config.Config{
		DefaultQueue:    *queue,
		ResultsExpireIn: 3600,
		NoUnixSignals:   true,
		Redis: &config.RedisConfig{
			MaxIdle: 10, MaxActive: 100, IdleTimeout: 300, Wait: true,
			ReadTimeout: 15, WriteTimeout: 15, ConnectTimeout: 15,
			NormalTasksPollPeriod: 1000, DelayedTasksPollPeriod: 200,
		},
	}
	br := redisbroker.New(cnf, u.Host, u.User.Username(), password, "", db)
	be := redisbackend.New(cnf, u.Host, u.User.Username(), password, "", db)
	server = machinery.NewServer(cnf, br, be, eagerlock.New())
	if err := server.RegisterTasks(map[string]interface{}{"go_relay": goRelay, "go_add": goAdd}); err != nil {
		fmt.Fprintln(os.Stderr, "mctrace:", err)
		return 1
	}
	worker := server.NewWorker(fmt.Sprintf("mctrace-%d", os.Getpid()), 2)
	worker.SetPreTaskHandler(func(sig *tasks.Signature) {
		ev := map[string]interface{}{"event": "pre_task", "task": sig.Name, "uuid": sig.UUID, "headers": sig.Headers}
		sc, err := opentracing.GlobalTracer().Extract(opentracing.TextMap, sig.Headers)
		if err != nil {
			ev["extract_error"] = err.Error()
		} else if jsc, ok := sc.(jaeger.SpanContext); ok {
			ev["extracted"] = map[string]interface{}{"trace_id": jaegerTraceID(jsc.TraceID()), "span_id": jsc.SpanID().String()}
		} else if ids, ok := sc.(interface {
			TraceID() trace.TraceID
			SpanID() trace.SpanID
		}); ok {
			ev["extracted"] = map[string]interface{}{"trace_id": ids.TraceID().String(), "span_id": ids.SpanID().String()}
		}
		emit(ev)
	})

	errs := make(chan error, 1)
	worker.LaunchAsync(errs)
	emit(map[string]interface{}{"event": "ready"})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	select {
	case <-sigs:
		worker.Quit()
		return 0
	case err := <-errs:
		fmt.Fprintln(os.Stderr, "mctrace: worker:", err)
		return 1
	}
}
