package redisurl_test

import (
	"errors"
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
	}
	for _, tt := range tests {
		_, err := redisurl.Parse(tt.url)
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
	if _, err := redisurl.Parse("redis://u:Zq7/Wv9Kx@db.internal:6379/0"); !errors.Is(err, redisurl.ErrUnparseable) {
		t.Errorf("a '/' in the password: %v", err)
	}
}
