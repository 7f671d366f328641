// Package jsonl writes one JSON object per line to a writer, safely from
// many goroutines (one Write call per line, under a mutex).
package jsonl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

// Writer serialises JSON lines.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// New wraps w (typically os.Stdout, which is unbuffered).
func New(w io.Writer) *Writer { return &Writer{w: w} }

// Emit marshals v (HTML escaping off, so "<" stays "<") and writes it
// followed by "\n" in a single Write. If v cannot be marshalled, an
// {"event":"emit_error",...} line is written instead.
func (j *Writer) Emit(v interface{}) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		buf.Reset()
		_ = json.NewEncoder(&buf).Encode(map[string]string{
			"event": "emit_error",
			"error": err.Error(),
			"value": fmt.Sprintf("%#v", v),
		})
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	_, _ = j.w.Write(buf.Bytes()) // os.Stdout is unbuffered: no flush needed
}

// Value renders one Go value for inclusion in an output line: its JSON
// encoding when encoding/json accepts it, otherwise its %v text as a JSON
// string.
func Value(v interface{}) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(fmt.Sprintf("%v", v))
	}
	return b
}
