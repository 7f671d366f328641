package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// scalarTypes maps Machinery's scalar type names to Go types.
var scalarTypes = map[string]reflect.Type{
	"bool":    reflect.TypeOf(false),
	"int":     reflect.TypeOf(int(0)),
	"int8":    reflect.TypeOf(int8(0)),
	"int16":   reflect.TypeOf(int16(0)),
	"int32":   reflect.TypeOf(int32(0)),
	"int64":   reflect.TypeOf(int64(0)),
	"uint":    reflect.TypeOf(uint(0)),
	"uint8":   reflect.TypeOf(uint8(0)),
	"uint16":  reflect.TypeOf(uint16(0)),
	"uint32":  reflect.TypeOf(uint32(0)),
	"uint64":  reflect.TypeOf(uint64(0)),
	"float32": reflect.TypeOf(float32(0)),
	"float64": reflect.TypeOf(float64(0)),
	"string":  reflect.TypeOf(""),
}

func decodeUseNumber(raw json.RawMessage) (interface{}, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v interface{}
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// convertArg turns a JSON value into the Go value Machinery expects for
// type typ: int8 -> int8, []int64 -> []int64, []byte/[]uint8 from a base64
// string (or an array of small integers), JSON null -> typed nil slice.
func convertArg(typ string, raw json.RawMessage) (interface{}, error) {
	if strings.HasPrefix(typ, "[]") {
		elemName := typ[2:]
		if elemName == "byte" {
			elemName = "uint8"
		}
		et, ok := scalarTypes[elemName]
		if !ok {
			return nil, fmt.Errorf("%s is not one of supported types", typ)
		}
		st := reflect.SliceOf(et)
		if isNull(raw) {
			return reflect.Zero(st).Interface(), nil // nil slice -> JSON null
		}
		v, err := decodeUseNumber(raw)
		if err != nil {
			return nil, err
		}
		if s, ok := v.(string); ok && elemName == "uint8" {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return nil, fmt.Errorf("%s value: %v", typ, err)
			}
			return b, nil
		}
		items, ok := v.([]interface{})
		if !ok {
			return nil, fmt.Errorf("%s value must be a JSON array, got %s", typ, raw)
		}
		out := reflect.MakeSlice(st, len(items), len(items))
		for i, it := range items {
			ev, err := convertScalar(elemName, it)
			if err != nil {
				return nil, fmt.Errorf("%s element %d: %v", typ, i, err)
			}
			out.Index(i).Set(reflect.ValueOf(ev))
		}
		return out.Interface(), nil
	}
	if _, ok := scalarTypes[typ]; !ok {
		return nil, fmt.Errorf("%s is not one of supported types", typ)
	}
	if isNull(raw) {
		return nil, fmt.Errorf("null is not a valid %s value (use \"raw\":true to send it anyway)", typ)
	}
	v, err := decodeUseNumber(raw)
	if err != nil {
		return nil, err
	}
	return convertScalar(typ, v)
}

func convertScalar(typ string, v interface{}) (interface{}, error) {
	switch typ {
	case "bool":
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("%v is not bool", v)
		}
		return b, nil
	case "string":
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%v is not string", v)
		}
		return s, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%v is not a JSON number (%s)", v, typ)
	}
	s := string(n)
	switch typ {
	case "int", "int8", "int16", "int32", "int64":
		bits := map[string]int{"int": strconv.IntSize, "int8": 8, "int16": 16, "int32": 32, "int64": 64}[typ]
		i, err := strconv.ParseInt(s, 10, bits)
		if err != nil {
			return nil, err
		}
		switch typ {
		case "int":
			return int(i), nil
		case "int8":
			return int8(i), nil
		case "int16":
			return int16(i), nil
		case "int32":
			return int32(i), nil
		}
		return i, nil
	case "uint", "uint8", "uint16", "uint32", "uint64":
		bits := map[string]int{"uint": strconv.IntSize, "uint8": 8, "uint16": 16, "uint32": 32, "uint64": 64}[typ]
		u, err := strconv.ParseUint(s, 10, bits)
		if err != nil {
			return nil, err
		}
		switch typ {
		case "uint":
			return uint(u), nil
		case "uint8":
			return uint8(u), nil
		case "uint16":
			return uint16(u), nil
		case "uint32":
			return uint32(u), nil
		}
		return u, nil
	case "float32":
		f, err := strconv.ParseFloat(s, 32)
		if err != nil {
			return nil, err
		}
		return float32(f), nil
	case "float64":
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, err
		}
		if math.IsInf(f, 0) {
			return nil, fmt.Errorf("%s overflows float64", s)
		}
		return f, nil
	}
	return nil, fmt.Errorf("%s is not one of supported types", typ)
}
