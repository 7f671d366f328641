// Command mcrelay puts a recording TCP relay in front of each memcached node
// (memcached has no MONITOR that shows values), for the interop tests' observer
// of a Memcache result backend (interop/tests/memcache_tap.py).
//
//	bin/mcrelay -nodes host1:port1,host2:port2,... -out FILE
//
// Each relay listens on a free 127.0.0.1 port and forwards bytes both ways
// untouched; the client's side is parsed as memcached's text protocol and every
// storage command (set/add/replace/append/prepend/cas) is appended to FILE as
// one JSON line {"seq","node","client_port","cmd","key","flags","exptime","data"
// (base64)} before it is forwarded (so a client that got the node's answer finds
// the write recorded). stdout gets one line {"ready":true,"addrs":[...]} (relay
// i in front of node i), then nothing. It runs until killed.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

type record struct {
	Seq        int64  `json:"seq"`
	Node       int    `json:"node"`
	ClientPort int    `json:"client_port"`
	Cmd        string `json:"cmd"`
	Key        string `json:"key"`
	Flags      int64  `json:"flags"`
	Exptime    int64  `json:"exptime"`
	Data       []byte `json:"data"`
}

type recorder struct {
	mu  sync.Mutex
	seq int64
	out *os.File
}

func (r *recorder) write(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	rec.Seq = r.seq
	b, _ := json.Marshal(rec)
	_, _ = r.out.Write(append(b, '\n'))
}

var storage = map[string]bool{"set": true, "add": true, "replace": true, "append": true, "prepend": true, "cas": true}

// parse records the complete storage commands at the head of buf and returns the rest.
func (r *recorder) parse(buf []byte, node, port int) []byte {
	for {
		end := bytes.Index(buf, []byte("\r\n"))
		if end < 0 {
			return buf
		}
		parts := strings.Fields(string(buf[:end]))
		if len(parts) >= 5 && storage[parts[0]] {
			size, err := strconv.Atoi(parts[4])
			if err == nil {
				if len(buf) < end+2+size+2 {
					return buf // the data block has not all arrived yet
				}
				flags, _ := strconv.ParseInt(parts[2], 10, 64)
				exp, _ := strconv.ParseInt(parts[3], 10, 64)
				data := append([]byte(nil), buf[end+2:end+2+size]...)
				r.write(record{Node: node, ClientPort: port, Cmd: parts[0], Key: parts[1],
					Flags: flags, Exptime: exp, Data: data})
				buf = buf[end+2+size+2:]
				continue
			}
		}
		buf = buf[end+2:]
	}
}

func (r *recorder) relay(client net.Conn, node int, addr string) {
	defer client.Close()
	server, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer server.Close()
	go func() {
		_, _ = io.Copy(client, server)
		client.Close()
	}()
	port := client.RemoteAddr().(*net.TCPAddr).Port
	rd := bufio.NewReaderSize(client, 65536)
	chunk := make([]byte, 65536)
	var buf []byte
	for {
		n, err := rd.Read(chunk)
		if n > 0 {
			buf = r.parse(append(buf, chunk[:n]...), node, port)
			if _, werr := server.Write(chunk[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func main() {
	nodes := flag.String("nodes", "", "memcached addresses host:port, comma-separated")
	outPath := flag.String("out", "", "file the writes are appended to (JSON lines)")
	flag.Parse()
	if *nodes == "" || *outPath == "" {
		fmt.Fprintln(os.Stderr, "mcrelay: -nodes and -out are required")
		os.Exit(2)
	}
	out, err := os.OpenFile(*outPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mcrelay:", err)
		os.Exit(2)
	}
	rec := &recorder{out: out}
	var addrs []string
	for i, addr := range strings.Split(*nodes, ",") {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "mcrelay:", err)
			os.Exit(2)
		}
		addrs = append(addrs, ln.Addr().String())
		go func(ln net.Listener, node int, addr string) {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go rec.relay(c, node, addr)
			}
		}(ln, i, addr)
	}
	b, _ := json.Marshal(map[string]interface{}{"ready": true, "addrs": addrs})
	fmt.Println(string(b))
	select {}
}
