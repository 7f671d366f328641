package mc

import (
	"flag"
	"reflect"
	"strings"
	"time"
	"unsafe"

	backendiface "github.com/RichardKnop/machinery/v2/backends/iface"
	memcachebackend "github.com/RichardKnop/machinery/v2/backends/memcache"
	"github.com/RichardKnop/machinery/v2/config"
	gomemcache "github.com/bradfitz/gomemcache/memcache"
)

// memcacheTimeout is -memcache-timeout of every program of this module: the
// gomemcache client timeout of a Memcache backend. 0 keeps gomemcache's
// default (100 ms), which Machinery never changes; the interop tests pass 1s,
// because a loaded 2-core CI machine misses 100 ms now and then (a failed
// SetStatePending, i.e. a failed send). Only the timeout differs: the client is
// gomemcache.New on the same server list, as Machinery's getClient makes it.
var memcacheTimeout = flag.Duration("memcache-timeout", 0,
	"gomemcache client timeout of a memcache:// backend (0: gomemcache's 100ms)")

// MemcacheServers splits a memcache://host1:port1,host2:port2 URL into the
// server list as Machinery v1's BackendFactory does (the text after the
// scheme, split on ","); v1 itself goes through that factory.
func MemcacheServers(url string) []string {
	return strings.Split(strings.TrimPrefix(url, "memcache://"), ",")
}

// newV2MemcacheBackend is Machinery v2's Memcache backend (gomemcache, whose
// ServerList picks a server by crc32(key) % len(servers), in list order).
func newV2MemcacheBackend(cnf *config.Config, url string) backendiface.Backend {
	be := memcachebackend.New(cnf, MemcacheServers(url))
	setMemcacheClient(be, url)
	return be
}

// setMemcacheClient gives Machinery's (v1 or v2) Memcache backend be, whose
// unexported field client is nil until its first use, a client with
// -memcache-timeout; nothing when the flag is 0 or be is another backend.
func setMemcacheClient(be interface{}, url string) {
	if *memcacheTimeout <= 0 || be == nil {
		return
	}
	v := reflect.ValueOf(be)
	if v.Kind() != reflect.Ptr || v.Elem().Kind() != reflect.Struct {
		return
	}
	field := v.Elem().FieldByName("client")
	if !field.IsValid() || field.Type() != reflect.TypeOf((*gomemcache.Client)(nil)) {
		return
	}
	c := gomemcache.New(MemcacheServers(url)...)
	c.Timeout = time.Duration(*memcacheTimeout)
	reflect.NewAt(field.Type(), unsafe.Pointer(field.UnsafeAddr())).Elem().Set(reflect.ValueOf(c))
}
