// Command mcproducer sends Machinery tasks described as JSON lines on stdin
// (or reads existing results) using Go Machinery, and prints one JSON line
// per input line on stdout (see README.md). Machinery's own log output goes to
// stderr.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/machinery-compat/interop/internal/jsonl"
	"github.com/machinery-compat/interop/internal/mc"
)

// argLine is one element of "args".
type argLine struct {
	Name  string          `json:"name"`
	Type  string          `json:"type"`
	Value json.RawMessage `json:"value"`
	// Raw: send Value's JSON text verbatim (json.RawMessage, compacted by
	// encoding/json) with this Type, without any conversion/validation.
	Raw bool `json:"raw"`
}

// taskLine is one stdin line.
type taskLine struct {
	ID   json.RawMessage `json:"id"`   // echoed back verbatim
	Read string          `json:"read"` // read mode: task UUID whose result to read

	Name                        string          `json:"name"`
	Args                        []argLine       `json:"args"`
	UUID                        string          `json:"uuid"`
	RoutingKey                  string          `json:"routing_key"`
	ETA                         string          `json:"eta"`
	CountdownMs                 int64           `json:"countdown_ms"`
	RetryCount                  int             `json:"retry_count"`
	RetryTimeout                int             `json:"retry_timeout"`
	Immutable                   bool            `json:"immutable"`
	Priority                    uint8           `json:"priority"`
	Headers                     json.RawMessage `json:"headers"`
	GroupUUID                   string          `json:"group_uuid"`
	GroupTaskCount              int             `json:"group_task_count"`
	OnSuccess                   []*taskLine     `json:"on_success"`
	OnError                     []*taskLine     `json:"on_error"`
	ChordCallback               *taskLine       `json:"chord_callback"`
	BrokerMessageGroupID        string          `json:"broker_message_group_id"`
	StopTaskDeletionOnError     bool            `json:"stop_task_deletion_on_error"`
	IgnoreWhenTaskNotRegistered bool            `json:"ignore_when_not_registered"`

	Wait      *bool `json:"wait"`       // default true
	TimeoutMs int64 `json:"timeout_ms"` // default -timeout-ms
	PollMs    int64 `json:"poll_ms"`    // default -poll-ms
}

type resultItem struct {
	GoType string          `json:"go_type"`
	Value  json.RawMessage `json:"value"`
	Repr   string          `json:"repr"`
}

type outLine struct {
	Line      int             `json:"line"`
	ID        json.RawMessage `json:"id,omitempty"`
	Read      bool            `json:"read,omitempty"`
	UUID      string          `json:"uuid"`
	Name      string          `json:"name,omitempty"`
	Sent      *bool           `json:"sent,omitempty"` // absent in read mode
	State     *string         `json:"state,omitempty"`
	Results   *[]resultItem   `json:"results,omitempty"`
	Error     string          `json:"error"`
	ElapsedMs *int64          `json:"elapsed_ms,omitempty"`
}

type producer struct {
	srv     mc.Server
	out     *jsonl.Writer
	timeout time.Duration
	poll    time.Duration
}

func main() {
	os.Exit(run())
}

func run() int {
	var (
		flavour   = flag.String("flavour", mc.FlavourV2Redigo, "v1 | v2-redigo | v2-goredis | v2 (no Redis URL)")
		broker    = flag.String("broker", "redis://127.0.0.1:6379/0", "broker URL (redis://, amqp:// or SQS http(s)://host[:port]/<account>)")
		backend   = flag.String("backend", "", "result backend URL (redis://, amqp://, https://dynamodb…; default: same as -broker)")
		queue     = flag.String("queue", "machinery_tasks", "DefaultQueue (routing key used when a line gives none)")
		parallel  = flag.Int("parallel", 1, "number of lines processed concurrently")
		read      = flag.String("read", "", "read the result of this task UUID, print one line and exit (stdin unused)")
		timeoutMs = flag.Int64("timeout-ms", 20000, "default GetWithTimeout timeout")
		pollMs    = flag.Int64("poll-ms", 50, "default GetWithTimeout sleep between polls")
		amqpOpts  = mc.AMQPFlags(flag.CommandLine)
		awsOpts   = mc.AWSFlags(flag.CommandLine)
		redisOpts = mc.RedisFlags(flag.CommandLine)
	)
	flag.Parse()
	if *backend == "" {
		*backend = *broker
	}
	if *parallel < 1 {
		*parallel = 1
	}
	mc.LogToStderr("mcproducer ")
	ao, err := amqpOpts(*queue)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcproducer:", err)
		return 2
	}
	srv, err := mc.New(mc.Options{Flavour: *flavour, Broker: *broker, Backend: *backend, Queue: *queue, AMQP: ao, AWS: awsOpts(), Redis: redisOpts()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcproducer:", err)
		return 2
	}
	p := &producer{
		srv: srv, out: jsonl.New(os.Stdout),
		timeout: time.Duration(*timeoutMs) * time.Millisecond,
		poll:    time.Duration(*pollMs) * time.Millisecond,
	}

	if *read != "" {
		p.out.Emit(p.readResult(0, nil, *read, p.timeout, p.poll))
		return 0
	}

	type job struct {
		n    int
		text []byte
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for i := 0; i < *parallel; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				p.out.Emit(p.handle(j.n, j.text))
			}
		}()
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	n := 0
	for sc.Scan() {
		n++
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		jobs <- job{n: n, text: append([]byte(nil), text...)}
	}
	close(jobs)
	wg.Wait()
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "mcproducer: stdin:", err)
		return 2
	}
	return 0
}

func (p *producer) handle(n int, text []byte) outLine {
	var tl taskLine
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	if err := dec.Decode(&tl); err != nil {
		sent := false
		return outLine{Line: n, Sent: &sent, Error: "bad input line: " + err.Error()}
	}
	timeout, poll := p.timeout, p.poll
	if tl.TimeoutMs > 0 {
		timeout = time.Duration(tl.TimeoutMs) * time.Millisecond
	}
	if tl.PollMs > 0 {
		poll = time.Duration(tl.PollMs) * time.Millisecond
	}
	if tl.Read != "" {
		return p.readResult(n, tl.ID, tl.Read, timeout, poll)
	}

	sent := false
	o := outLine{Line: n, ID: tl.ID, UUID: tl.UUID, Name: tl.Name, Sent: &sent}
	spec, err := toSpec(&tl)
	if err != nil {
		o.Error = "bad task: " + err.Error()
		return o
	}
	start := time.Now()
	uuid, res, err := p.srv.SendTask(spec)
	o.UUID = uuid
	if err != nil {
		o.Error = "send: " + err.Error()
		return o
	}
	sent = true
	if tl.Wait != nil && !*tl.Wait {
		return o
	}
	p.fill(&o, res, timeout, poll, start)
	return o
}

func (p *producer) readResult(n int, id json.RawMessage, uuid string, timeout, poll time.Duration) outLine {
	o := outLine{Line: n, ID: id, Read: true, UUID: uuid}
	p.fill(&o, p.srv.ReadResult(uuid), timeout, poll, time.Now())
	return o
}

// fill waits for the result and records state, results and error.
func (p *producer) fill(o *outLine, res mc.Result, timeout, poll time.Duration, start time.Time) {
	vals, err := getRecovering(res, timeout, poll)
	el := time.Since(start).Milliseconds()
	o.ElapsedMs = &el
	st := res.State()
	o.State = &st
	if err != nil {
		o.Error = err.Error()
	}
	if vals != nil {
		items := make([]resultItem, len(vals))
		for i, v := range vals {
			items[i] = describe(v)
		}
		o.Results = &items
	}
}

// getRecovering is res.GetWithTimeout with a panic inside Machinery reported as the error
// "panic: <value>" instead of ending mcproducer (Go's MongoDB reader panics in its reflection
// on the BSON binary Go's own writer stores for []uint8 results).
func getRecovering(res mc.Result, timeout, poll time.Duration) (vals []reflect.Value, err error) {
	defer func() {
		if r := recover(); r != nil {
			vals, err = nil, fmt.Errorf("panic: %v", r)
		}
	}()
	return res.GetWithTimeout(timeout, poll)
}

func describe(v reflect.Value) resultItem {
	if !v.IsValid() || !v.CanInterface() {
		return resultItem{GoType: "<invalid>", Value: json.RawMessage("null"), Repr: "<invalid>"}
	}
	x := v.Interface()
	return resultItem{GoType: fmt.Sprintf("%T", x), Value: jsonl.Value(x), Repr: fmt.Sprintf("%v", x)}
}

func toSpec(tl *taskLine) (*mc.Spec, error) {
	if tl == nil {
		return nil, nil
	}
	if tl.Name == "" {
		return nil, fmt.Errorf("missing \"name\"")
	}
	sp := &mc.Spec{
		UUID: tl.UUID, Name: tl.Name, RoutingKey: tl.RoutingKey,
		GroupUUID: tl.GroupUUID, GroupTaskCount: tl.GroupTaskCount,
		Priority: tl.Priority, Immutable: tl.Immutable,
		RetryCount: tl.RetryCount, RetryTimeout: tl.RetryTimeout,
		BrokerMessageGroupId:        tl.BrokerMessageGroupID,
		StopTaskDeletionOnError:     tl.StopTaskDeletionOnError,
		IgnoreWhenTaskNotRegistered: tl.IgnoreWhenTaskNotRegistered,
	}
	switch {
	case tl.ETA != "":
		t, err := time.Parse(time.RFC3339Nano, tl.ETA)
		if err != nil {
			return nil, fmt.Errorf("eta: %v", err)
		}
		sp.ETA = &t
	case tl.CountdownMs > 0:
		t := time.Now().UTC().Add(time.Duration(tl.CountdownMs) * time.Millisecond)
		sp.ETA = &t
	}
	if tl.Args != nil {
		sp.Args = make([]mc.Arg, len(tl.Args))
		for i, a := range tl.Args {
			var v interface{}
			if a.Raw {
				if isNull(a.Value) {
					v = nil
				} else {
					v = a.Value
				}
			} else {
				var err error
				v, err = convertArg(a.Type, a.Value)
				if err != nil {
					return nil, fmt.Errorf("arg %d (%s): %v", i, a.Type, err)
				}
			}
			sp.Args[i] = mc.Arg{Name: a.Name, Type: a.Type, Value: v}
		}
	}
	if !isNull(tl.Headers) {
		v, err := decodeUseNumber(tl.Headers)
		if err != nil {
			return nil, fmt.Errorf("headers: %v", err)
		}
		h, ok := v.(map[string]interface{})
		if !ok {
			return nil, fmt.Errorf("headers must be a JSON object")
		}
		sp.Headers = h
	}
	var err error
	for _, c := range tl.OnSuccess {
		var cs *mc.Spec
		if cs, err = toSpec(c); err != nil {
			return nil, fmt.Errorf("on_success: %v", err)
		}
		sp.OnSuccess = append(sp.OnSuccess, cs)
	}
	for _, c := range tl.OnError {
		var cs *mc.Spec
		if cs, err = toSpec(c); err != nil {
			return nil, fmt.Errorf("on_error: %v", err)
		}
		sp.OnError = append(sp.OnError, cs)
	}
	if tl.ChordCallback != nil {
		if sp.ChordCallback, err = toSpec(tl.ChordCallback); err != nil {
			return nil, fmt.Errorf("chord_callback: %v", err)
		}
	}
	return sp, nil
}
