package worker

import (
	"net"
	"net/http"
	"time"
)

// ProbeAddr is the admin address "worker ready" probes: COURIER_ADMIN_ADDR,
// or the default address when it is unset ("" when it is set empty: the
// admin server is off and nothing can be probed).
func ProbeAddr(lookupEnv func(string) (string, bool)) string {
	if addr, ok := lookupEnv("COURIER_ADMIN_ADDR"); ok {
		return addr
	}
	return DefaultAdminAddr
}

// Probe asks a worker's admin server whether it is ready (for container
// health checks, where no curl exists); it returns the exit code: 0 when
// /readyz answers 200, else 1.
func Probe(addr string) int {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 1
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/readyz")
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
