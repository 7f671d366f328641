package mc

import (
	"reflect"
	"testing"
	"time"
	"unsafe"

	v1memcache "github.com/RichardKnop/machinery/v1/backends/memcache"
	v1config "github.com/RichardKnop/machinery/v1/config"
	"github.com/RichardKnop/machinery/v2/config"
	gomemcache "github.com/bradfitz/gomemcache/memcache"
)

func clientOf(t *testing.T, be interface{}) *gomemcache.Client {
	t.Helper()
	f := reflect.ValueOf(be).Elem().FieldByName("client")
	return (*gomemcache.Client)(unsafe.Pointer(f.Pointer()))
}

func TestMemcacheServers(t *testing.T) {
	got := MemcacheServers("memcache://a:1,b:2,c:3")
	if !reflect.DeepEqual(got, []string{"a:1", "b:2", "c:3"}) {
		t.Fatal(got)
	}
}

func TestMemcacheTimeoutFlag(t *testing.T) {
	old := *memcacheTimeout
	defer func() { *memcacheTimeout = old }()
	url := "memcache://127.0.0.1:1,127.0.0.1:2"
	*memcacheTimeout = 0 // Machinery's own: no client until first use
	if c := clientOf(t, newV2MemcacheBackend(&config.Config{}, url)); c != nil {
		t.Fatalf("client set without -memcache-timeout: %+v", c)
	}
	*memcacheTimeout = 1500 * time.Millisecond
	for _, be := range []interface{}{
		newV2MemcacheBackend(&config.Config{}, url),
		func() interface{} {
			b := v1memcache.New(&v1config.Config{}, MemcacheServers(url))
			setMemcacheClient(b, url)
			return b
		}(),
	} {
		c := clientOf(t, be)
		if c == nil || c.Timeout != 1500*time.Millisecond {
			t.Fatalf("%T: client %+v", be, c)
		}
	}
}
