package mc

import (
	"strings"

	backendiface "github.com/RichardKnop/machinery/v2/backends/iface"
	memcachebackend "github.com/RichardKnop/machinery/v2/backends/memcache"
	"github.com/RichardKnop/machinery/v2/config"
)

// MemcacheServers splits a memcache://host1:port1,host2:port2 URL into the
// server list as Machinery v1's BackendFactory does (the text after the
// scheme, split on ","); v1 itself goes through that factory.
func MemcacheServers(url string) []string {
	return strings.Split(strings.TrimPrefix(url, "memcache://"), ",")
}

// newV2MemcacheBackend is Machinery v2's Memcache backend (gomemcache, whose
// ServerList picks a server by crc32(key) % len(servers), in list order).
func newV2MemcacheBackend(cnf *config.Config, url string) backendiface.Backend {
	return memcachebackend.New(cnf, MemcacheServers(url))
}
