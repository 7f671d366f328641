package rurl

import "testing"

func TestParse(t *testing.T) {
	cases := []struct {
		in   string
		want URL
		addr string
	}{
		{"redis://127.0.0.1:6399/3", URL{Host: "127.0.0.1:6399", DB: 3}, "127.0.0.1:6399"},
		{"redis://localhost", URL{Host: "localhost:6379"}, "localhost:6379"},
		{"redis://secret@h:1/0", URL{Host: "h:1", Password: "secret"}, "secret@h:1"},
		{"redis://u:p%40w@h:1/2", URL{Host: "h:1", Username: "u", Password: "p@w", DB: 2}, "u:p@w@h:1"},
	}
	for _, c := range cases {
		got, err := Parse(c.in)
		if err != nil || got != c.want || got.GoRedisAddr() != c.addr {
			t.Errorf("Parse(%q) = %+v, %v (addr %q); want %+v (addr %q)", c.in, got, err, got.GoRedisAddr(), c.want, c.addr)
		}
	}
	if _, err := Parse("amqp://x"); err == nil {
		t.Error("amqp:// accepted")
	}
}
