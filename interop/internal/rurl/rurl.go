// Package rurl parses the plain redis:// URLs the interop programs accept.
//
// Accepted form: redis://[user[:password]@]host[:port][/db] (also rediss://,
// which is treated exactly like redis://: TLS is not enabled, matching
// Machinery, where rediss:// alone does not turn TLS on). A userinfo without a
// colon is taken as the password, as Machinery's v1 ParseRedisURL does.
package rurl

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// URL is a parsed Redis URL.
type URL struct {
	Host     string // host:port
	Username string
	Password string
	DB       int
}

// Parse parses a redis:// URL.
func Parse(raw string) (URL, error) {
	var out URL
	u, err := url.Parse(raw)
	if err != nil {
		return out, err
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return out, fmt.Errorf("not a redis:// URL: %q", raw)
	}
	if u.User != nil {
		if pw, ok := u.User.Password(); ok {
			out.Username = u.User.Username()
			out.Password = pw
		} else {
			out.Password = u.User.Username()
		}
	}
	out.Host = u.Host
	if out.Host == "" {
		out.Host = "127.0.0.1:6379"
	} else if u.Port() == "" {
		out.Host += ":6379"
	}
	p := strings.Trim(u.Path, "/")
	if p != "" {
		db, err := strconv.Atoi(strings.SplitN(p, "/", 2)[0])
		if err != nil {
			return out, fmt.Errorf("bad redis db in %q: %v", raw, err)
		}
		out.DB = db
	}
	return out, nil
}

// GoRedisAddr renders the address the way Machinery's NewGR constructors
// expect it: "[user:password@]host:port" (credentials only on the first
// address; NewGR splits them off itself).
func (u URL) GoRedisAddr() string {
	switch {
	case u.Username != "":
		return u.Username + ":" + u.Password + "@" + u.Host
	case u.Password != "":
		return u.Password + "@" + u.Host
	}
	return u.Host
}
