// Command sublime captures the exact bytes of the sublime-security Machinery fork
// (github.com/sublime-security/machinery, v1 tree) for the Python "sublime" wire
// dialect: tests/data/golden/sublime*.json.  Dev-time only: the fork is not on the
// Go module proxy, so this module replaces github.com/RichardKnop/machinery with a
// fetched copy of the fork's source (see ../sublime-golden.sh).  CI never runs it.
//
//	go run . -redis redis://127.0.0.1:PORT -sqs http://127.0.0.1:PORT -out ../../tests/data/golden
//
// Outputs:
//
//	sublime.json         json.Marshal of the fork's tasks.Signature / TaskState / GroupMeta
//	                     (same case shape as golden.json)
//	sublime_decode.json  the fork's broker decoder (json.Decoder + UseNumber into
//	                     tasks.Signature) on edge inputs: accepted + re-marshalled, or its error
//	sublime_brokers.json what the fork's Redis (redigo) and SQS brokers really write
//	                     through server.SendTask (real redis-server, moto), and the
//	                     signature an SQS fork worker hands to a task
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	machinery "github.com/RichardKnop/machinery/v1"
	redisbackend "github.com/RichardKnop/machinery/v1/backends/redis"
	redisbroker "github.com/RichardKnop/machinery/v1/brokers/redis"
	sqsbroker "github.com/RichardKnop/machinery/v1/brokers/sqs"
	"github.com/RichardKnop/machinery/v1/config"
	eagerlock "github.com/RichardKnop/machinery/v1/locks/eager"
	"github.com/RichardKnop/machinery/v1/tasks"
	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	awssqs "github.com/aws/aws-sdk-go/service/sqs"
	"github.com/gomodule/redigo/redis"
)

const (
	uuidAdd   = "task_7e0b7c39-3d0c-4b5e-9e1a-2f7d5c1b8a90"
	groupUUID = "group_0f3c2b1a-9d8e-4f7a-8b6c-5d4e3f2a1b0c"
	source    = "sublime-security/machinery v1 tree"
)

var (
	tNow    = time.Date(2024, 5, 1, 12, 34, 56, 123456789, time.UTC)
	tMilli  = time.Date(2024, 5, 1, 5, 34, 56, 123000000, time.FixedZone("", -7*3600))
	tHalf   = time.Date(2024, 5, 1, 12, 34, 57, 500000000, time.FixedZone("", -7*3600))
	tOffset = time.Date(2024, 5, 1, 12, 0, 0, 120000, time.FixedZone("UTC+2", 2*3600))
)

type goldenCase struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"`
	Source      string `json:"source"`
	Description string `json:"description"`
	JSON        string `json:"json"`
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func marshal(v interface{}) string {
	raw, err := json.Marshal(v)
	must(err)
	return string(raw)
}

func addSig() *tasks.Signature {
	return &tasks.Signature{
		UUID: uuidAdd, Name: "add", RoutingKey: "machinery_tasks",
		Args:    []tasks.Arg{{Type: "int64", Value: int64(1)}, {Type: "int64", Value: int64(1)}},
		Headers: tasks.Headers{},
	}
}

func signatureCases() []goldenCase {
	var out []goldenCase
	add := func(name, kind, desc string, v interface{}) {
		out = append(out, goldenCase{Name: name, Kind: kind, Source: source + " (" + kind + ")", Description: desc, JSON: marshal(v)})
	}
	add("sublime_empty_signature", "signature", "zero tasks.Signature{} (29 fields, zero values)", &tasks.Signature{})
	add("sublime_add_1_1", "signature", "§15.1 RPUSH body: add(1,1), RoutingKey machinery_tasks, Headers {}", addSig())

	s := addSig()
	s.Delay = 5 * time.Second
	s.RoutingKey = ""
	add("sublime_sqs_add_delay_5s", "signature", "§15.3 SQS body: Delay 5 s kept, RoutingKey empty (encoded before defaulting)", s)

	s = addSig()
	s.Delay = -1500 * time.Millisecond
	add("sublime_negative_delay", "signature", "negative Delay (means no delay) written as a negative integer", s)

	s = addSig()
	s.RetryCount, s.AttemptCount, s.RetryTimeout = 2, 1, 1
	add("sublime_first_retry", "signature", "§15.2 first default retry: RetryCount 2, AttemptCount 1, RetryTimeout 1", s)

	// every field set to a non-zero value
	ing, first := tMilli, tNow
	full := &tasks.Signature{
		UUID: uuidAdd, Name: "full \u00e9\u2028<&>", RoutingKey: "custom_queue",
		Delay: 1234567890123, IngestionTime: &ing, FirstReceived: &first, ReceivedAt: tHalf,
		GroupUUID: groupUUID, GroupTaskCount: 3,
		Args: []tasks.Arg{
			{Name: "when", Type: "time.Time", Value: "2024-05-01T12:00:00.5Z"},
			{Name: "s", Type: "string", Value: "x\"y\\z\b\f"},
		},
		Headers:  tasks.Headers{"b": "2", "a": "1", "uber-trace-id": "abc:def:0:1"},
		Priority: 7, Immutable: true, RetryCount: 5, AttemptCount: 4, RetryTimeout: 8,
		SplitSpan:            true,
		OnSuccess:            []*tasks.Signature{{Name: "cb", Delay: time.Second, Immutable: true}},
		OnError:              []*tasks.Signature{},
		ChordCallback:        &tasks.Signature{Name: "chord", UUID: "chord_1", NoBackend: true},
		BrokerMessageGroupId: "mg", SQSReceiptHandle: "rh==", SQSMessageID: "0f1e2d3c-mid",
		AzureMessageID: "azid", AzurePopReceipt: "AgAAAAMAAAAAAAAA", AzureMessageContent: `{"UUID":"x","Delay":0}`,
		NoBackend: true, StopTaskDeletionOnError: true, IgnoreWhenTaskNotRegistered: true,
	}
	add("sublime_full", "signature", "every field non-zero (times: ms in -07:00, ns in UTC, .5 s in -07:00; nested callbacks)", full)

	s = addSig()
	off := tOffset
	s.IngestionTime, s.ReceivedAt = &off, tOffset
	add("sublime_times_offset", "signature", "IngestionTime and ReceivedAt at +02:00 with 120 µs", s)

	s = addSig()
	s.Headers, s.SplitSpan = nil, true
	add("sublime_split_span_null_headers", "signature", "SplitSpan true leaves Headers null", s)

	add("sublime_state_pending", "task_state", "§15.1 PENDING state (unchanged format)", &tasks.TaskState{
		TaskUUID: uuidAdd, TaskName: "add", State: tasks.StatePending, CreatedAt: tNow})
	add("sublime_group_meta", "group_meta", "GroupMeta (unchanged format)", &tasks.GroupMeta{
		GroupUUID: groupUUID, TaskUUIDs: []string{"task_a", "task_b"}, CreatedAt: tNow, TTL: 3600})
	return out
}

// ------------------------------------------------------------------ decoding

type decodeCase struct {
	Name        string `json:"name"`
	Input       string `json:"input"`
	OK          bool   `json:"ok"`
	Error       string `json:"error,omitempty"`
	Reencoded   string `json:"reencoded,omitempty"`
	Description string `json:"description"`
}

func decodeCases() []decodeCase {
	base := func(extra string) string {
		return `{"UUID":"task_1","Name":"add","RoutingKey":"q"` + extra + `}`
	}
	inputs := []struct{ name, desc, input string }{
		{"delay_int", "integer nanoseconds", base(`,"Delay":5000000000`)},
		{"delay_null", "null = 0", base(`,"Delay":null`)},
		{"delay_negative", "negative decodes", base(`,"Delay":-7`)},
		{"delay_exp", "exponent rejected", base(`,"Delay":5e9`)},
		{"delay_float", "fraction rejected", base(`,"Delay":5.0`)},
		{"delay_string", "string rejected", base(`,"Delay":"5s"`)},
		{"delay_bool", "bool rejected", base(`,"Delay":true`)},
		{"delay_overflow", "above int64 rejected", base(`,"Delay":9223372036854775808`)},
		{"delay_max", "int64 max", base(`,"Delay":9223372036854775807`)},
		{"delay_lowercase", "keys match case-insensitively", base(`,"delay":7`)},
		{"ingestion_null", "null pointer time", base(`,"IngestionTime":null`)},
		{"ingestion_offset", "RFC 3339 with offset", base(`,"IngestionTime":"2024-05-01T05:34:56.123-07:00"`)},
		{"ingestion_no_offset", "missing offset rejected", base(`,"IngestionTime":"2024-05-01T05:34:56"`)},
		{"ingestion_empty", "empty string rejected", base(`,"IngestionTime":""`)},
		{"ingestion_number", "number rejected", base(`,"IngestionTime":1714566896`)},
		{"first_received_z", "UTC", base(`,"FirstReceived":"2024-05-01T12:34:56.123456789Z"`)},
		{"received_at_null", "null = zero time", base(`,"ReceivedAt":null`)},
		{"received_at_empty", "empty string rejected", base(`,"ReceivedAt":""`)},
		{"received_at_lowercase_z", "lowercase t/z", base(`,"ReceivedAt":"2024-05-01t12:34:56z"`)},
		{"attempt_count", "int", base(`,"AttemptCount":3`)},
		{"attempt_count_float", "fraction rejected", base(`,"AttemptCount":3.5`)},
		{"attempt_count_string", "string rejected", base(`,"AttemptCount":"3"`)},
		{"split_span_string", "string rejected", base(`,"SplitSpan":"true"`)},
		{"no_backend_true", "bool", base(`,"NoBackend":true`)},
		{"no_backend_number", "number rejected", base(`,"NoBackend":1`)},
		{"sqs_message_id_number", "number rejected", base(`,"SQSMessageID":5`)},
		{"azure_content_null", "null = empty", base(`,"AzureMessageContent":null`)},
		{"azure_pop_receipt_bool", "bool rejected", base(`,"AzurePopReceipt":false`)},
		{"upstream_message", "an upstream v1/v2 message: ETA ignored", `{"UUID":"task_1","Name":"add","RoutingKey":"q","ETA":"2024-05-01T12:35:01.5Z","GroupUUID":"","GroupTaskCount":0,"Args":[{"Name":"","Type":"int64","Value":1}],"Headers":{},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}`},
		{"upstream_bad_eta", "ETA is not a fork field: any value ignored", base(`,"ETA":5`)},
		{"nested_delay", "nested callback Delay", base(`,"OnSuccess":[{"Name":"cb","Delay":1000000000,"AttemptCount":2}]`)},
		{"nested_bad_delay", "nested callback bad Delay", base(`,"ChordCallback":{"Name":"cb","Delay":"1s"}`)},
	}
	var out []decodeCase
	for _, in := range inputs {
		dec := json.NewDecoder(bytes.NewReader([]byte(in.input)))
		dec.UseNumber()
		var sig tasks.Signature
		c := decodeCase{Name: in.name, Input: in.input, Description: in.desc}
		if err := dec.Decode(&sig); err != nil {
			c.Error = err.Error()
		} else {
			c.OK = true
			c.Reencoded = marshal(&sig)
		}
		out = append(out, c)
	}
	return out
}

// ------------------------------------------------------------------ brokers

// recorder records the SQS API requests (form bodies) the fork's SDK v1 client sends.
type recorder struct {
	mu   sync.Mutex
	reqs []map[string]string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		vals, _ := url.ParseQuery(string(body))
		m := map[string]string{}
		for k := range vals {
			m[k] = vals.Get(k)
		}
		r.mu.Lock()
		r.reqs = append(r.reqs, m)
		r.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(req)
}

func (r *recorder) take(action string) []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]string
	for _, m := range r.reqs {
		if m["Action"] == action {
			out = append(out, m)
		}
	}
	r.reqs = nil
	return out
}

func baseConfig(redisURL string) *config.Config {
	return &config.Config{
		Broker: redisURL, ResultBackend: redisURL, DefaultQueue: "machinery_tasks",
		ResultsExpireIn: 3600, NoUnixSignals: true,
		Redis: &config.RedisConfig{MaxIdle: 3, IdleTimeout: 240, ReadTimeout: 15, WriteTimeout: 15,
			ConnectTimeout: 15, NormalTasksPollPeriod: 1000, DelayedTasksPollPeriod: 500},
	}
}

func hostPort(redisURL string) string {
	u, err := url.Parse(redisURL)
	must(err)
	return u.Host
}

func redisCapture(redisURL string) map[string]interface{} {
	conn, err := redis.Dial("tcp", hostPort(redisURL))
	must(err)
	defer conn.Close()
	_, err = conn.Do("FLUSHDB")
	must(err)

	cnf := baseConfig(redisURL)
	broker := redisbroker.New(cnf, hostPort(redisURL), "", "", 0)
	backend := redisbackend.New(cnf, hostPort(redisURL), "", "", 0)
	server := machinery.NewServerWithBrokerBackendLock(cnf, broker, backend, eagerlock.New())

	send := func(sig *tasks.Signature) (int64, int64, *tasks.Signature) {
		before := time.Now().UnixNano()
		_, err := server.SendTask(sig)
		must(err)
		return before, time.Now().UnixNano(), sig
	}
	out := map[string]interface{}{}

	// 1. no delay: RPUSH
	_, _, _ = send(&tasks.Signature{UUID: uuidAdd, Name: "add",
		Args: []tasks.Arg{{Type: "int64", Value: int64(1)}, {Type: "int64", Value: int64(1)}}})
	list, err := redis.Strings(conn.Do("LRANGE", "machinery_tasks", 0, -1))
	must(err)
	state, err := redis.String(conn.Do("GET", uuidAdd))
	must(err)
	out["rpush_member"] = list[0]
	out["rpush_list_length"] = len(list)
	out["pending_state_shape"] = state
	_, err = conn.Do("FLUSHDB")
	must(err)

	// 2. Delay 5 s: ZADD with "Delay":0 in the member, score = now + delay (ns)
	sig := &tasks.Signature{UUID: uuidAdd, Name: "add", Delay: 5 * time.Second,
		Args: []tasks.Arg{{Type: "int64", Value: int64(1)}, {Type: "int64", Value: int64(1)}}}
	before, after, sent := send(sig)
	zs, err := redis.Strings(conn.Do("ZRANGE", "delayed_tasks", 0, -1, "WITHSCORES"))
	must(err)
	llen, err := redis.Int(conn.Do("LLEN", "machinery_tasks"))
	must(err)
	score, err := strconv.ParseFloat(zs[1], 64) // Redis keeps scores as doubles
	must(err)
	out["zadd_member"] = zs[0]
	out["zadd_score"] = zs[1]
	out["zadd_delay_ns"] = int64(5 * time.Second)
	out["zadd_clock_before_ns"] = before
	out["zadd_clock_after_ns"] = after
	out["zadd_score_minus_before_ns"] = int64(score) - before
	out["zadd_score_minus_after_ns"] = int64(score) - after
	out["zadd_list_length"] = llen
	out["zadd_caller_signature_after_publish"] = marshal(sent)
	return out
}

func sqsCapture(redisURL, sqsURL string) map[string]interface{} {
	rec := &recorder{}
	sess := session.Must(session.NewSession(&aws.Config{
		Region: aws.String("us-east-1"), Endpoint: aws.String(sqsURL),
		Credentials: credentials.NewStaticCredentials("testing", "testing", ""),
		HTTPClient:  &http.Client{Transport: rec},
	}))
	client := awssqs.New(sess)
	q, err := client.CreateQueue(&awssqs.CreateQueueInput{QueueName: aws.String("machinery_tasks")})
	must(err)
	qURL := *q.QueueUrl
	brokerURL := qURL[:len(qURL)-len("/machinery_tasks")]
	rec.take("")

	cnf := baseConfig(redisURL)
	cnf.Broker = brokerURL
	wait := 1
	cnf.SQS = &config.SQSConfig{Client: client, WaitTimeSeconds: wait}
	broker := sqsbroker.New(cnf)
	backend := redisbackend.New(cnf, hostPort(redisURL), "", "", 0)
	server := machinery.NewServerWithBrokerBackendLock(cnf, broker, backend, eagerlock.New())

	out := map[string]interface{}{"queue_url_prefix_is_broker": true}
	args := []tasks.Arg{{Type: "int64", Value: int64(1)}, {Type: "int64", Value: int64(1)}}
	sendRec := func(name string, sig *tasks.Signature) {
		_, err := server.SendTask(sig)
		must(err)
		reqs := rec.take("SendMessage")
		if len(reqs) != 1 {
			panic(fmt.Sprintf("%s: %d SendMessage requests", name, len(reqs)))
		}
		r := reqs[0]
		r["QueueUrl"] = "<broker>" + r["QueueUrl"][len(brokerURL):]
		out[name] = r
	}
	sendRec("send_delay_5s", &tasks.Signature{UUID: uuidAdd, Name: "add", Delay: 5 * time.Second, Args: args})
	sendRec("send_delay_2500ms", &tasks.Signature{UUID: uuidAdd, Name: "add", Delay: 2500 * time.Millisecond, Args: args})
	sendRec("send_delay_20min_clamped", &tasks.Signature{UUID: uuidAdd, Name: "add", Delay: 20 * time.Minute, Args: args})
	sendRec("send_no_delay", &tasks.Signature{UUID: uuidAdd, Name: "add", Args: args})
	// consume (from a fresh queue): what a fork worker hands to the task
	_, err = client.CreateQueue(&awssqs.CreateQueueInput{QueueName: aws.String("consume_tasks")})
	must(err)
	cnf2 := *cnf
	cnf2.DefaultQueue = "consume_tasks"
	server = machinery.NewServerWithBrokerBackendLock(&cnf2, sqsbroker.New(&cnf2), backend, eagerlock.New())
	seen := make(chan string, 1)
	must(server.RegisterTask("add", func(ctx context.Context, a, b int64) (int64, error) {
		seen <- marshal(tasks.SignatureFromContext(ctx))
		return a + b, nil
	}))
	sent := &tasks.Signature{UUID: "task_sqs_consume", Name: "add", Args: args, AttemptCount: 9}
	_, err = server.SendTask(sent)
	must(err)
	rec.take("")
	worker := server.NewWorker("golden", 1)
	errs := make(chan error, 1)
	worker.LaunchAsync(errs)
	select {
	case got := <-seen:
		out["consumed_signature_as_task_sees_it"] = got
	case <-time.After(30 * time.Second):
		panic("SQS consume timed out")
	}
	worker.Quit()
	recv := rec.take("ReceiveMessage")
	if len(recv) > 0 {
		out["receive_request"] = recv[0]
	}
	return out
}

func write(dir, name string, v interface{}) {
	raw, err := json.MarshalIndent(v, "", "  ")
	must(err)
	raw = append(raw, '\n')
	must(os.WriteFile(filepath.Join(dir, name), raw, 0o644))
	fmt.Println("wrote", filepath.Join(dir, name))
}

func main() {
	redisURL := flag.String("redis", "", "redis://host:port of a scratch redis-server (FLUSHDB is run)")
	sqsURL := flag.String("sqs", "", "http://host:port of a moto server")
	outDir := flag.String("out", "../../tests/data/golden", "output directory")
	rev := flag.String("rev", "", "fork commit the source was exported from (recorded)")
	flag.Parse()
	write(*outDir, "sublime.json", signatureCases())
	write(*outDir, "sublime_decode.json", decodeCases())
	if *redisURL == "" || *sqsURL == "" {
		fmt.Println("no -redis/-sqs: sublime_brokers.json not written")
		return
	}
	brokers := map[string]interface{}{
		"source": source + " " + *rev + ", redigo Redis broker+backend, SQS broker (aws-sdk-go v1) on moto",
		"redis":  redisCapture(*redisURL),
		"sqs":    sqsCapture(*redisURL, *sqsURL),
	}
	write(*outDir, "sublime_brokers.json", brokers)
}
