package mc

import (
	"encoding/json"
	"flag"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestParseTableIntegerWidths(t *testing.T) {
	m, err := ParseTable(`{"x-max-priority":10,"big":5000000000,"f":1.5,"s":"x","b":true}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m["x-max-priority"].(int); !ok { // YAML gives Go int: AMQP 'I'
		t.Errorf("x-max-priority: %T", m["x-max-priority"])
	}
	if _, ok := m["big"].(int64); !ok {
		t.Errorf("big: %T", m["big"])
	}
	if m["f"] != 1.5 || m["s"] != "x" || m["b"] != true {
		t.Errorf("got %#v", m)
	}
	if err := amqp.Table(m).Validate(); err != nil {
		t.Error(err)
	}
	if m, err := ParseTable(""); err != nil || m != nil {
		t.Errorf("empty: %v %v", m, err)
	}
}

func TestAMQPHeadersPublishable(t *testing.T) {
	var h map[string]interface{}
	dec := json.NewDecoder(jsonReader(`{"n":1,"x":{"y":2.5,"z":[1,"a"]},"s":"t"}`))
	dec.UseNumber()
	if err := dec.Decode(&h); err != nil {
		t.Fatal(err)
	}
	if err := amqp.Table(h).Validate(); err == nil {
		t.Fatal("json.Number should not be publishable as is")
	}
	if err := amqp.Table(AMQPHeaders(h)).Validate(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(AMQPHeaders(h))
	if string(b) != `{"n":1,"s":"t","x":{"y":2.5,"z":[1,"a"]}}` {
		t.Errorf("JSON changed: %s", b)
	}
}

func TestAMQPFlagsDefaultBindingKey(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	get := AMQPFlags(fs)
	if err := fs.Parse([]string{"-amqp-queue-args", `{"x-max-priority":10}`}); err != nil {
		t.Fatal(err)
	}
	o, err := get("q1")
	if err != nil {
		t.Fatal(err)
	}
	if o.BindingKey != "q1" || o.Exchange != "machinery_exchange" || o.ExchangeType != "direct" ||
		o.PrefetchCount != 3 || o.QueueDeclareArgs["x-max-priority"] != 10 {
		t.Errorf("got %#v", o)
	}
}

func jsonReader(s string) *strings.Reader { return strings.NewReader(s) }
