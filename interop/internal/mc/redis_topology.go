package mc

import (
	"flag"
	"fmt"
	"strings"

	v1config "github.com/RichardKnop/machinery/v1/config"
	v2config "github.com/RichardKnop/machinery/v2/config"

	"github.com/machinery-compat/interop/internal/rurl"
)

// RedisOptions are Machinery's Redis Cluster and Sentinel settings.
//
// v2 (go-redis constructors only: NewGR of the broker, backend and lock):
// redis.cluster_enabled, redis.master_name, redis.sentinel_password; the
// addresses are NewGR's addrs (one: a plain client, several: a cluster
// client, any with master_name: a sentinel FailoverClient on them).
//
// v1 (URL factories): redis.cluster_mode and redis.master_name; a redis://
// URL holding several addresses ("redis://a:1,b:2") or cluster_mode selects
// the go-redis constructor (NewGR, DB 0), one address without it redigo. v1
// has no sentinel_password.
type RedisOptions struct {
	ClusterEnabled   bool   // v2 redis.cluster_enabled, v1 redis.cluster_mode
	MasterName       string // redis.master_name
	SentinelPassword string // v2 redis.sentinel_password
}

// RedisFlags registers -redis-cluster, -redis-master-name and
// -redis-sentinel-password on fs; call the result after fs.Parse.
func RedisFlags(fs *flag.FlagSet) func() RedisOptions {
	var (
		cluster  = fs.Bool("redis-cluster", false, "redis.cluster_enabled (v2) / redis.cluster_mode (v1): go-redis ClusterClient")
		master   = fs.String("redis-master-name", "", "redis.master_name: the -broker/-backend addresses are sentinels (go-redis FailoverClient)")
		sentinel = fs.String("redis-sentinel-password", "", "redis.sentinel_password (v2)")
	)
	return func() RedisOptions {
		return RedisOptions{ClusterEnabled: *cluster, MasterName: *master, SentinelPassword: *sentinel}
	}
}

func configureV2Redis(cnf *v2config.Config, o Options) {
	cnf.Redis.ClusterEnabled = o.Redis.ClusterEnabled
	cnf.Redis.MasterName = o.Redis.MasterName
	cnf.Redis.SentinelPassword = o.Redis.SentinelPassword
}

func configureV1Redis(cnf *v1config.Config, o Options) {
	cnf.Redis.ClusterMode = o.Redis.ClusterEnabled
	cnf.Redis.MasterName = o.Redis.MasterName
}

// GoRedisAddrs gives NewGR's addrs and db for a redis:// URL: several
// comma-separated addresses ("redis://[pw@]a:1,b:2", v1's factory form: DB 0,
// the password on the first address as NewGR expects it) or one address
// (rurl: credentials folded into the address, /db honoured).
func GoRedisAddrs(raw string) ([]string, int, error) {
	rest := raw
	for _, scheme := range []string{"redis://", "rediss://"} {
		rest = strings.TrimPrefix(rest, scheme)
	}
	if strings.Contains(rest, ",") {
		addrs := strings.Split(strings.TrimSuffix(rest, "/"), ",")
		for _, a := range addrs {
			if a == "" || strings.Contains(a, "/") {
				return nil, 0, fmt.Errorf("several Redis addresses: want redis://host:port,host:port (no /db: DB 0), got %q", raw)
			}
		}
		return addrs, 0, nil
	}
	u, err := rurl.Parse(raw)
	if err != nil {
		return nil, 0, err
	}
	return []string{u.GoRedisAddr()}, u.DB, nil
}

// Raw is the *machinery.Server (v2) behind s, for programs that need more
// than the Server interface (groups, chords).
func (s *v2Server) Raw() interface{} { return s.srv }

// Raw is the *machinery.Server (v1) behind s.
func (s *v1Server) Raw() interface{} { return s.srv }
