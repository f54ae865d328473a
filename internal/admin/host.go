package admin

import (
	"fmt"
	"net"
	"net/http"
	"strings"
)

// hostGuard refuses, on a server without auth, requests whose Host header
// names a host other than loopback, localhost, an IP address, a single-label
// name (a container's or service's) or the listen address's host. A web page
// whose DNS name is rebound to 127.0.0.1 reaches the server with its own
// name as Host and the same origin, which cross-origin protection lets
// through; its Host gives it away. The probes answer whatever the Host.
func hostGuard(h http.Handler, addr string) http.Handler {
	listen, _, _ := net.SplitHostPort(addr)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || allowedHost(r.Host, listen) {
			h.ServeHTTP(w, r)
			return
		}
		http.Error(w, fmt.Sprintf("host %q is not this admin server's: without auth (COURIER_ADMIN_USER) it answers only to localhost, an IP address, a single-label name or %q", clip(r.Host), listen),
			http.StatusMisdirectedRequest)
	})
}

func allowedHost(hostport, listen string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	switch {
	case host == "":
		return false
	case host == "localhost", strings.HasSuffix(host, ".localhost"), net.ParseIP(host) != nil:
		return true
	case listen != "" && strings.EqualFold(host, listen):
		return true
	}
	return !strings.Contains(host, ".")
}

// clip shortens a caller's value quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
