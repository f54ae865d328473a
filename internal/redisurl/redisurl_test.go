package redisurl_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/courier-dev/courier/internal/redisurl"
)

// leaks reports the first 3-byte piece of pw that text shows.
func leaks(text, pw string) string {
	for i := 0; i+3 <= len(pw); i++ {
		if strings.Contains(text, pw[i:i+3]) {
			return pw[i : i+3]
		}
	}
	return ""
}

// No part of a password shows, whatever is wrong with the URL.
func TestPasswordNeverShown(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url, pw string
		bad     bool
	}{
		{"redis://u:Zq%9pWv@db.internal:6379/0", "Zq%9pWv", true},     // invalid escape
		{"redis://u:Zq7/Wv9Kx@db.internal:6379/0", "Zq7/Wv9Kx", true}, // '/' ends the host
		{"redis://u:Zq7#Wv9Kx@db.internal:6379/0", "Zq7#Wv9Kx", true}, // '#' ends the host
		{"redis://u:8613/4429@db.internal:6379/0", "8613/4429", true}, // parses, as host:port and path
		{"redis://u:8613#4429@db.internal:6379/0", "8613#4429", true}, // parses, as host:port and fragment
		{"redis://u:8613?4429@db.internal:6379/0", "8613?4429", true}, // parses, as host:port and query
		{"redis://u:Zq7Wv9Kx@db.internal:6379/x", "Zq7Wv9Kx", true},   // bad database number
		{"redis://u:Zq7Wv9Kx@db.internal:6379/0?bogus=1", "Zq7Wv9Kx", true},
		{"ftp://u:Zq7Wv9Kx@db.internal:6379/0", "Zq7Wv9Kx", true},
		{"redis://u:Zq7%2FWv9Kx@db.internal:6379/0", "Zq7/Wv9Kx", false}, // encoded: fine
		// in password=: an '&' makes the tail an option, a '#' a fragment
		{"redis://s1:26379/0?master_name=m&password=Zq7W&v9Kx", "Zq7W&v9Kx", true},
		{"redis://n1:7000?addr=n2:7001&password=Zq7W&v9Kx=1", "Zq7W&v9Kx=1", true},
		{"redis://s1:26379/0?master_name=m&password=Zq7W#v9Kx", "Zq7W#v9Kx", true},
		{"redis://n1:7000?addr=n2:7001&password=Zq7W#v9Kx", "Zq7W#v9Kx", true},
		{"redis://s1:26379/0?master_name=m&Password=Zq7Wv9Kx", "Zq7Wv9Kx", true}, // a misspelt name
		{"redis://s1:26379/0?master_name=m&password=Zq7W%26v9Kx", "Zq7W&v9Kx", false},
	}
	for _, tt := range tests {
		_, err := redisurl.Parse(tt.url, redisurl.ModeAuto)
		if (err != nil) != tt.bad {
			t.Errorf("%s: error %v, want an error: %v", tt.url, err, tt.bad)
			continue
		}
		text := redisurl.Redact(tt.url)
		if err != nil {
			text += " " + err.Error() + " " + redisurl.Scrub("dial "+tt.url+" "+tt.pw, tt.url)
		}
		if p := leaks(text, tt.pw); p != "" {
			t.Errorf("%s: %q shows %q", tt.url, text, p)
		}
	}
	if _, err := redisurl.Parse("redis://u:Zq7/Wv9Kx@db.internal:6379/0", redisurl.ModeAuto); !errors.Is(err, redisurl.ErrUnparseable) {
		t.Errorf("a '/' in the password: %v", err)
	}
}

// Each form gives the client go-redis would build from it; the mode
// setting decides where the URL alone cannot.
func TestForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string
		mode redisurl.Mode
		want redisurl.Mode
		// what the parsed options must hold, as "field=value" checks
		check func(*redisurl.Options) string
	}{
		{"redis://127.0.0.1:6379/2", redisurl.ModeAuto, redisurl.ModeSingle, func(o *redisurl.Options) string {
			return fmt.Sprint(o.Single.Addr, " ", o.Single.DB)
		}},
		{"redis://:sentpw@s1:26379/3?master_name=mymaster&addr=s2:26379&addr=s3:26379&password=datapw", redisurl.ModeAuto, redisurl.ModeSentinel,
			func(o *redisurl.Options) string {
				f := o.Failover
				return fmt.Sprint(f.MasterName, " ", f.SentinelAddrs, " ", f.DB, " ", f.SentinelPassword, " ", f.Password)
			}},
		{"redis-sentinel://:sentpw@s1:26379,s2:26380/1?master=mymaster", redisurl.ModeAuto, redisurl.ModeSentinel,
			func(o *redisurl.Options) string {
				f := o.Failover
				return fmt.Sprint(f.MasterName, " ", f.SentinelAddrs, " ", f.DB, " ", f.SentinelPassword, " ", f.Password)
			}},
		{"rediss://s1:26379?master_name=m", redisurl.ModeSentinel, redisurl.ModeSentinel, func(o *redisurl.Options) string {
			return fmt.Sprintf("tls=%v servername=%q", o.Failover.TLSConfig != nil, o.Failover.TLSConfig.ServerName)
		}},
		{"redis://u:pw@n1:7000?addr=n2:7001&addr=n3:7002", redisurl.ModeAuto, redisurl.ModeCluster, func(o *redisurl.Options) string {
			return fmt.Sprint(o.Cluster.Addrs, " ", o.Cluster.Username, " ", o.Cluster.Password)
		}},
		{"rediss://cfg.example.com:6379?skip_verify=true", redisurl.ModeCluster, redisurl.ModeCluster, func(o *redisurl.Options) string {
			c := o.Cluster
			return fmt.Sprintf("%v tls=%v skip=%v servername=%q", c.Addrs, c.TLSConfig != nil, c.TLSConfig.InsecureSkipVerify, c.TLSConfig.ServerName)
		}},
	}
	want := []string{
		"127.0.0.1:6379 2",
		"mymaster [s1:26379 s2:26379 s3:26379] 3 sentpw datapw",
		"mymaster [s1:26379 s2:26380] 1 sentpw ",
		`tls=true servername=""`,
		"[n1:7000 n2:7001 n3:7002] u pw",
		`[cfg.example.com:6379] tls=true skip=true servername=""`,
	}
	for i, tt := range tests {
		o, err := redisurl.Parse(tt.url, tt.mode)
		if err != nil {
			t.Errorf("%s: %v", tt.url, err)
			continue
		}
		if o.Mode != tt.want {
			t.Errorf("%s: mode %q, want %q", tt.url, o.Mode, tt.want)
			continue
		}
		if got := tt.check(o); got != want[i] {
			t.Errorf("%s: %s, want %s", tt.url, got, want[i])
		}
	}
}

// A wrong form or mode is refused with an error that says what to change,
// and never shows a password (in the user info or in password=).
func TestBadForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string
		mode redisurl.Mode
		want string // a piece of the error
	}{
		{"redis://:Zq7Wv9Kx@s1:26379?addr=s2:26379", redisurl.ModeSentinel, "master_name"},
		{"redis-sentinel://:Zq7Wv9Kx@s1:26379,s2:26379", redisurl.ModeAuto, "master=NAME"},
		{"redis-sentinel://:Zq7Wv9Kx@s1:26379?master=m&password=Zq7Wv9Kx", redisurl.ModeAuto, "not password="},
		{"redis-sentinel://:Zq7Wv9Kx@s1,s2:26379?master=m", redisurl.ModeAuto, "want host:port"},
		{"redis://:Zq7Wv9Kx@n1:7000?addr=n2:7001", redisurl.ModeSingle, "single mode takes one address"},
		{"redis://n1:7000/3?addr=n2:7001&password=Zq7Wv9Kx", redisurl.ModeAuto, "only database 0"},
		{"redis://s1:26379?master_name=m&password=Zq7Wv9Kx", redisurl.ModeCluster, "master_name"},
		{"redis://n1:7000?addr=n2&password=Zq7Wv9Kx", redisurl.ModeAuto, "addr"},
		{"redis://s1:26379?master_name=m&bogus=1", redisurl.ModeAuto, "bogus"},
		// beside a password= an unknown option may be its tail (an '&' not encoded): not named
		{"redis://s1:26379?master_name=m&bogus=1&password=Zq7Wv9Kx", redisurl.ModeAuto, "%26"},
		{"rediss://:Zq7Wv9Kx@n1:7000?addr=n2:7001&skip_verify=maybe", redisurl.ModeAuto, "skip_verify"},
	}
	for _, tt := range tests {
		_, err := redisurl.Parse(tt.url, tt.mode)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s (mode %q): error %v, want one naming %q", tt.url, tt.mode, err, tt.want)
			continue
		}
		text := err.Error() + " " + redisurl.Redact(tt.url) + " " + redisurl.Scrub("dial "+tt.url, tt.url)
		if p := leaks(text, "Zq7Wv9Kx"); p != "" {
			t.Errorf("%s: %q shows %q", tt.url, text, p)
		}
	}
	if _, err := redisurl.ParseMode("clustered"); err == nil || !strings.Contains(err.Error(), "want auto, single, sentinel or cluster") {
		t.Errorf("ParseMode(clustered): %v", err)
	}
}
