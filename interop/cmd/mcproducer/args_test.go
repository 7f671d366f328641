package main

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestConvertArg(t *testing.T) {
	ok := []struct {
		typ, raw string
		want     interface{}
	}{
		{"bool", "true", true},
		{"int", "-5", int(-5)},
		{"int8", "-128", int8(-128)},
		{"int16", "32767", int16(32767)},
		{"int32", "7", int32(7)},
		{"int64", "-9223372036854775808", int64(-9223372036854775808)},
		{"uint", "3", uint(3)},
		{"uint8", "255", uint8(255)},
		{"uint16", "1", uint16(1)},
		{"uint32", "4294967295", uint32(4294967295)},
		{"uint64", "18446744073709551615", uint64(18446744073709551615)},
		{"float32", "0.1", float32(0.1)},
		{"float64", "1e21", 1e21},
		{"string", `"<&>"`, "<&>"},
		{"[]int64", "[1,2]", []int64{1, 2}},
		{"[]int64", "[]", []int64{}},
		{"[]int64", "null", []int64(nil)},
		{"[]string", `["a"]`, []string{"a"}},
		{"[]byte", `"aGk="`, []byte("hi")},
		{"[]uint8", "[1,2]", []uint8{1, 2}},
		{"[]byte", "null", []byte(nil)},
		{"[]float32", "[0.5]", []float32{0.5}},
	}
	for _, c := range ok {
		got, err := convertArg(c.typ, json.RawMessage(c.raw))
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("convertArg(%s, %s) = %#v, %v; want %#v", c.typ, c.raw, got, err, c.want)
		}
	}
	bad := []struct{ typ, raw string }{
		{"int8", "300"}, {"int64", "1.0"}, {"uint64", "-1"}, {"bool", "1"},
		{"string", "1"}, {"int64", "null"}, {"map", "{}"}, {"[]int64", `"12"`}, {"[]int64", "[1.5]"},
	}
	for _, c := range bad {
		if got, err := convertArg(c.typ, json.RawMessage(c.raw)); err == nil {
			t.Errorf("convertArg(%s, %s) = %#v, want error", c.typ, c.raw, got)
		}
	}
}
