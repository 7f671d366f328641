// Command mctopo measures which Go Machinery operations work on a Redis
// Cluster or through Redis Sentinel (issue #14, docs/scaling.md).
//
// It builds one Machinery server (mc.New: -flavour v1 | v2-goredis |
// v2-redigo, -broker/-backend redis://…, -redis-cluster, -redis-master-name,
// -redis-sentinel-password), starts a worker in this process, then runs each
// probe and prints one JSON line per probe on stdout:
//
//	{"op": "send", "ok": true, "error": "", "detail": "..."}
//
// Probes: worker (the consumer started), send (SendTask + the result read
// back), state (GetState of a finished task), eta (an ETA task through the
// delayed_tasks ZSET and the mover), group (SendGroup: InitGroup, states of
// every member), chord (SendChord: GroupCompleted + TriggerChord's redsync
// lock + the callback) and lock (the periodic-task lock: Machinery's Redis
// lock on the same addresses, a second holder refused). A final line
// {"op": "worker_errors", "errors": [...]} lists what the worker's error
// handler saw. Machinery's own log goes to stderr.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	v1 "github.com/RichardKnop/machinery/v1"
	v1result "github.com/RichardKnop/machinery/v1/backends/result"
	v1config "github.com/RichardKnop/machinery/v1/config"
	v1tasks "github.com/RichardKnop/machinery/v1/tasks"
	v2 "github.com/RichardKnop/machinery/v2"
	v2result "github.com/RichardKnop/machinery/v2/backends/result"
	v2config "github.com/RichardKnop/machinery/v2/config"
	v2redislock "github.com/RichardKnop/machinery/v2/locks/redis"
	v2tasks "github.com/RichardKnop/machinery/v2/tasks"

	"github.com/machinery-compat/interop/internal/mc"
)

type line struct {
	Op     string   `json:"op"`
	OK     bool     `json:"ok"`
	Error  string   `json:"error"`
	Detail string   `json:"detail,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

var out = json.NewEncoder(os.Stdout)

func emit(l line) { _ = out.Encode(l) }

func add(args ...int64) (int64, error) {
	var s int64
	for _, a := range args {
		s += a
	}
	return s, nil
}

func main() {
	var (
		flavour = flag.String("flavour", mc.FlavourV2GoRedis, "v1 | v2-goredis | v2-redigo")
		broker  = flag.String("broker", "", "redis://host:port[,host:port…] (several: cluster nodes, or sentinels with -redis-master-name)")
		backend = flag.String("backend", "", "result backend (default: -broker)")
		queue   = flag.String("queue", "topo_tasks", "DefaultQueue")
		timeout = flag.Duration("timeout", 15*time.Second, "per-probe timeout")
		probes  = flag.String("probes", "send,state,eta,group,chord,lock", "probes to run, in order (also: steady)")
		steadyN = flag.Int("steady-n", 300, "steady: tasks sent, one every -steady-gap")
		steadyG = flag.Duration("steady-gap", 20*time.Millisecond, "steady: pause between sends")
		redis   = mc.RedisFlags(flag.CommandLine)
	)
	flag.Parse()
	if *backend == "" {
		*backend = *broker
	}
	mc.LogToStderr("mctopo ")
	ro := redis()
	srv, err := mc.New(mc.Options{Flavour: *flavour, Broker: *broker, Backend: *backend,
		Queue: *queue, DelayedPollMs: 200, NormalPollMs: 500, Redis: ro})
	if err != nil {
		emit(line{Op: "server", Error: err.Error()})
		os.Exit(1)
	}
	if err := srv.RegisterTasks(map[string]interface{}{"add": add}); err != nil {
		emit(line{Op: "server", Error: err.Error()})
		os.Exit(1)
	}
	var mu sync.Mutex
	var werrs []string
	w := srv.NewWorker("mctopo", 4)
	w.SetErrorHandler(func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if len(werrs) < 20 {
			werrs = append(werrs, fmt.Sprint(err))
		}
	})
	launched := make(chan error, 1)
	go func() { launched <- w.Launch() }()
	select {
	case err := <-launched:
		emit(line{Op: "worker", Error: fmt.Sprint(err)})
	case <-time.After(300 * time.Millisecond):
		emit(line{Op: "worker", OK: true})
	}

	p := &prober{srv: srv, timeout: *timeout, flavour: *flavour, broker: *broker, ro: ro,
		steadyN: *steadyN, steadyGap: *steadyG}
	for _, name := range strings.Split(*probes, ",") {
		emit(p.run(strings.TrimSpace(name)))
	}
	mu.Lock()
	emit(line{Op: "worker_errors", OK: len(werrs) == 0, Errors: werrs})
	mu.Unlock()
	os.Exit(0)
}

type prober struct {
	srv      mc.Server
	timeout  time.Duration
	flavour  string
	broker   string
	ro       mc.RedisOptions
	lastUUID string

	steadyN   int
	steadyGap time.Duration
}

func (p *prober) run(name string) (l line) {
	l.Op = name
	done := make(chan line, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- line{Op: name, Error: fmt.Sprintf("panic: %v", r)}
			}
		}()
		var r line
		switch name {
		case "send":
			r = p.send()
		case "state":
			r = p.state()
		case "eta":
			r = p.eta()
		case "group":
			r = p.group()
		case "chord":
			r = p.chord()
		case "lock":
			r = p.lock()
		case "steady":
			r = p.steady()
		default:
			r = line{Error: "unknown probe"}
		}
		r.Op = name
		done <- r
	}()
	select {
	case l = <-done:
	case <-time.After(p.timeout + 5*time.Second + time.Duration(p.steadyN)*p.steadyGap*2):
		l.Error = "probe hung"
	}
	return l
}

func intArgs(vals ...int64) []mc.Arg {
	a := make([]mc.Arg, len(vals))
	for i, v := range vals {
		a[i] = mc.Arg{Type: "int64", Value: v}
	}
	return a
}

func first(vals []reflect.Value) string {
	if len(vals) == 0 {
		return "<none>"
	}
	return fmt.Sprint(vals[0].Interface())
}

func (p *prober) send() line {
	uuid, res, err := p.srv.SendTask(&mc.Spec{Name: "add", Args: intArgs(1, 2)})
	if err != nil {
		return line{Error: "send: " + err.Error()}
	}
	p.lastUUID = uuid
	vals, err := res.GetWithTimeout(p.timeout, 50*time.Millisecond)
	if err != nil {
		return line{Error: "result: " + err.Error()}
	}
	return line{OK: first(vals) == "3", Detail: "add(1,2) = " + first(vals)}
}

func (p *prober) state() line {
	if p.lastUUID == "" {
		return line{Error: "no task sent"}
	}
	st := p.srv.ReadResult(p.lastUUID)
	vals, err := st.GetWithTimeout(p.timeout, 50*time.Millisecond)
	if err != nil {
		return line{Error: "read: " + err.Error()}
	}
	return line{OK: st.State() == "SUCCESS", Detail: st.State() + " " + first(vals)}
}

func (p *prober) eta() line {
	eta := time.Now().UTC().Add(1500 * time.Millisecond)
	start := time.Now()
	_, res, err := p.srv.SendTask(&mc.Spec{Name: "add", Args: intArgs(2, 3), ETA: &eta})
	if err != nil {
		return line{Error: "send: " + err.Error()}
	}
	vals, err := res.GetWithTimeout(p.timeout, 50*time.Millisecond)
	if err != nil {
		return line{Error: "result: " + err.Error()}
	}
	took := time.Since(start)
	return line{OK: first(vals) == "5" && took >= time.Second,
		Detail: fmt.Sprintf("add(2,3) = %s after %.1f s (ETA +1.5 s)", first(vals), took.Seconds())}
}

// group and chord need the Machinery server itself (SendGroup / SendChord).
type rawer interface{ Raw() interface{} }

func (p *prober) group() line {
	var got []string
	switch s := p.srv.(rawer).Raw().(type) {
	case *v2.Server:
		g, _ := v2tasks.NewGroup(v2sig(1, 1), v2sig(2, 2), v2sig(3, 3))
		rs, err := s.SendGroup(g, 0)
		if err != nil {
			return line{Error: "send: " + err.Error()}
		}
		for _, r := range rs {
			vals, err := r.GetWithTimeout(p.timeout, 50*time.Millisecond)
			if err != nil {
				return line{Error: "result: " + err.Error()}
			}
			got = append(got, first(vals))
		}
		ok, err := s.GetBackend().GroupCompleted(g.GroupUUID, len(g.Tasks))
		if err != nil || !ok {
			return line{Error: fmt.Sprintf("GroupCompleted: %v %v", ok, err)}
		}
	case *v1.Server:
		g, _ := v1tasks.NewGroup(v1sig(1, 1), v1sig(2, 2), v1sig(3, 3))
		rs, err := s.SendGroup(g, 0)
		if err != nil {
			return line{Error: "send: " + err.Error()}
		}
		for _, r := range rs {
			vals, err := r.GetWithTimeout(p.timeout, 50*time.Millisecond)
			if err != nil {
				return line{Error: "result: " + err.Error()}
			}
			got = append(got, first(vals))
		}
		ok, err := s.GetBackend().GroupCompleted(g.GroupUUID, len(g.Tasks))
		if err != nil || !ok {
			return line{Error: fmt.Sprintf("GroupCompleted: %v %v", ok, err)}
		}
	default:
		return line{Error: fmt.Sprintf("unknown server %T", s)}
	}
	d := strings.Join(got, ",")
	return line{OK: d == "2,4,6", Detail: "group results " + d + ", GroupCompleted true"}
}

func v2sig(a, b int64) *v2tasks.Signature {
	return &v2tasks.Signature{Name: "add", Args: []v2tasks.Arg{{Type: "int64", Value: a}, {Type: "int64", Value: b}}}
}

func v1sig(a, b int64) *v1tasks.Signature {
	return &v1tasks.Signature{Name: "add", Args: []v1tasks.Arg{{Type: "int64", Value: a}, {Type: "int64", Value: b}}}
}

func (p *prober) chord() line {
	var vals []reflect.Value
	var err error
	switch s := p.srv.(rawer).Raw().(type) {
	case *v2.Server:
		g, _ := v2tasks.NewGroup(v2sig(1, 1), v2sig(2, 2), v2sig(3, 3))
		c, _ := v2tasks.NewChord(g, &v2tasks.Signature{Name: "add"})
		var r *v2result.ChordAsyncResult
		if r, err = s.SendChord(c, 0); err != nil {
			return line{Error: "send: " + err.Error()}
		}
		vals, err = r.GetWithTimeout(p.timeout, 50*time.Millisecond)
	case *v1.Server:
		g, _ := v1tasks.NewGroup(v1sig(1, 1), v1sig(2, 2), v1sig(3, 3))
		c, _ := v1tasks.NewChord(g, &v1tasks.Signature{Name: "add"})
		var r *v1result.ChordAsyncResult
		if r, err = s.SendChord(c, 0); err != nil {
			return line{Error: "send: " + err.Error()}
		}
		vals, err = r.GetWithTimeout(p.timeout, 50*time.Millisecond)
	default:
		return line{Error: fmt.Sprintf("unknown server %T", s)}
	}
	if err != nil {
		return line{Error: "callback result: " + err.Error()}
	}
	return line{OK: first(vals) == "12", Detail: "chord callback add(2,4,6) = " + first(vals)}
}

// lock takes the periodic-task lock as RegisterPeriodicTask does
// (LockWithRetries(name, next run)) on six keys (spread over the slots of a
// cluster), checking that a second taker of each is refused.
func (p *prober) lock() line {
	until := time.Now().Add(30 * time.Second).UnixNano()
	type locker interface {
		LockWithRetries(string, int64) error
	}
	var l locker
	if p.flavour == mc.FlavourV1 {
		cnf := &v1config.Config{Lock: p.broker, Redis: &v1config.RedisConfig{
			ClusterMode: p.ro.ClusterEnabled, MasterName: p.ro.MasterName}}
		lk, err := v1.LockFactory(cnf)
		if err != nil {
			return line{Error: "LockFactory: " + err.Error()}
		}
		l = lk
	} else {
		addrs, db, err := mc.GoRedisAddrs(p.broker)
		if err != nil {
			return line{Error: err.Error()}
		}
		cnf := &v2config.Config{Redis: &v2config.RedisConfig{ClusterEnabled: p.ro.ClusterEnabled,
			MasterName: p.ro.MasterName, SentinelPassword: p.ro.SentinelPassword}}
		l = v2redislock.New(cnf, addrs, db, 3)
	}
	for i := 0; i < 6; i++ {
		key := fmt.Sprintf("machinery_lock_topo_%d_%d", time.Now().UnixNano(), i)
		if err := l.LockWithRetries(key, until); err != nil {
			return line{Error: "first lock: " + err.Error(), Detail: fmt.Sprintf("%d of 6 keys locked", i)}
		}
		if err := l.LockWithRetries(key, until); err == nil {
			return line{Error: "second lock taken too"}
		} else if !strings.Contains(err.Error(), "failed to acquire lock") {
			return line{Error: "second lock: " + err.Error()}
		}
	}
	return line{OK: true, Detail: "6 keys taken once each, refused to a second taker"}
}

// steady sends steadyN tasks one every steadyGap (a failover is caused
// meanwhile by the caller), retrying a failed send until it succeeds or
// timeout passed, then waits for every result. Detail: "sent S/N (E send
// errors, first: …), results R/S".
func (p *prober) steady() line {
	var res []mc.Result
	var want []string
	sendErrs, firstErr := 0, ""
	for i := 0; i < p.steadyN; i++ {
		deadline := time.Now().Add(p.timeout)
		for {
			_, r, err := p.srv.SendTask(&mc.Spec{Name: "add", Args: intArgs(int64(i), 1)})
			if err == nil {
				res = append(res, r)
				want = append(want, fmt.Sprint(i+1))
				break
			}
			sendErrs++
			if firstErr == "" {
				firstErr = err.Error()
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(p.steadyGap)
	}
	// every result within one -timeout in all (a lost task must not cost a timeout each)
	got, deadline := 0, time.Now().Add(p.timeout)
	for i, r := range res {
		wait := time.Until(deadline)
		if wait < 100*time.Millisecond {
			wait = 100 * time.Millisecond
		}
		if vals, err := r.GetWithTimeout(wait, 50*time.Millisecond); err == nil && first(vals) == want[i] {
			got++
		}
	}
	return line{OK: len(res) == p.steadyN && got == len(res),
		Detail: fmt.Sprintf("sent %d/%d (%d send errors, first: %q), results %d/%d", len(res), p.steadyN, sendErrs, firstErr, got, len(res))}
}
