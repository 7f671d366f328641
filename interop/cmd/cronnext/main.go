// Command cronnext prints the next fire times robfig/cron v3 (the scheduler Machinery's
// RegisterPeriodicTask uses) computes for a list of specs, so machinery_compat's Python
// cron can be compared with it (tests/data/cron_next.json, tests/unit/test_cron*.py).
//
// Input on stdin, a JSON array of cases:
//
//	[{"spec": "*/15 9-17 * * MON-FRI", "local": "America/New_York",
//	  "start": "2024-03-08T16:50:00.25-05:00", "n": 5}, ...]
//
// "local" is what time.Local is set to for that case (specs without CRON_TZ= run in it;
// default UTC); "start" is RFC 3339 (fractions allowed); "n" next times are computed the way
// cron's run loop does (each from the previous one; default 5).
//
// Output on stdout, a JSON array in the same order: each case with either
// "next" (Unix seconds: every fire time is a whole second; 0 = robfig's zero time, i.e.
// never) and "next_text" (RFC 3339 in the schedule's zone), or "error" (ParseStandard's error text), or "panic" (the spec makes
// ParseStandard panic).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/robfig/cron/v3"
)

type inCase struct {
	Spec  string `json:"spec"`
	Local string `json:"local"`
	Start string `json:"start"`
	N     int    `json:"n"`
}

type outCase struct {
	Spec     string   `json:"spec"`
	Local    string   `json:"local"`
	Start    string   `json:"start"`
	N        int      `json:"n"`
	Next     []int64  `json:"next,omitempty"`
	NextText []string `json:"next_text,omitempty"`
	Error    string   `json:"error,omitempty"`
	Panic    string   `json:"panic,omitempty"`
}

func parse(spec string) (s cron.Schedule, err error, panicked string) {
	defer func() {
		if r := recover(); r != nil {
			panicked = fmt.Sprint(r)
		}
	}()
	s, err = cron.ParseStandard(spec)
	return s, err, ""
}

func run(c inCase) (outCase, error) {
	out := outCase{Spec: c.Spec, Local: c.Local, Start: c.Start, N: c.N}
	if out.Local == "" {
		out.Local = "UTC"
	}
	if out.N <= 0 {
		out.N = 5
	}
	loc, err := time.LoadLocation(out.Local)
	if err != nil {
		return out, fmt.Errorf("case %q: local %q: %v", c.Spec, out.Local, err)
	}
	time.Local = loc // before parsing: a spec without CRON_TZ= captures time.Local
	start, err := time.Parse(time.RFC3339Nano, c.Start)
	if err != nil {
		return out, fmt.Errorf("case %q: start: %v", c.Spec, err)
	}
	sched, perr, panicked := parse(c.Spec)
	switch {
	case panicked != "":
		out.Panic = panicked
		return out, nil
	case perr != nil:
		out.Error = perr.Error()
		return out, nil
	}
	t := start.In(time.Local) // what time.Now() gives a Go scheduler
	out.Next = []int64{}
	out.NextText = []string{}
	for i := 0; i < out.N; i++ {
		t = sched.Next(t)
		if t.IsZero() {
			out.Next = append(out.Next, 0)
			out.NextText = append(out.NextText, "")
			break
		}
		if t.Nanosecond() != 0 {
			return out, fmt.Errorf("case %q: %v is not a whole second", c.Spec, t)
		}
		out.Next = append(out.Next, t.Unix())
		text := t.Format(time.RFC3339)
		if ss, ok := sched.(*cron.SpecSchedule); ok && ss.Location != time.Local {
			text = t.In(ss.Location).Format(time.RFC3339)
		}
		out.NextText = append(out.NextText, text)
	}
	return out, nil
}

func main() {
	var cases []inCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "cronnext: reading cases:", err)
		os.Exit(2)
	}
	outs := make([]outCase, 0, len(cases))
	for _, c := range cases {
		o, err := run(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cronnext:", err)
			os.Exit(2)
		}
		outs = append(outs, o)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(outs); err != nil {
		fmt.Fprintln(os.Stderr, "cronnext:", err)
		os.Exit(1)
	}
}
