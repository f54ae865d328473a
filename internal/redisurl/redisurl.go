// Package redisurl reads REDIS_URL without ever printing its password: a
// URL that does not parse is reported by what to fix, never quoted, since
// any part of it may be the password.
package redisurl

import (
	"errors"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrUnparseable matches a URL whose text cannot be shown: it does not
// parse, or a character of the password cut it short.
var ErrUnparseable = errors.New("cannot be parsed (its text is not shown: it may hold a password); " +
	"want redis:// or rediss://[user:password@]host:port/db, with % / # ? and @ in the password percent-encoded as %25 %2F %23 %3F %40")

// Parse reads a Redis URL into go-redis options. Its errors never hold any
// part of the password.
func Parse(raw string) (*redis.Options, error) {
	u, err := parse(raw)
	if err != nil {
		return nil, err
	}
	opt, err := redis.ParseURL(raw)
	if err != nil {
		return nil, errors.New(scrub(err.Error(), u))
	}
	return opt, nil
}

// parse checks that url.Parse reads raw as written: an '@' left outside the
// user info means a '/', '#' or '?' in the password ended the host early,
// and what url.Parse took for host, path or fragment is the password.
func parse(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, ErrUnparseable
	}
	if strings.Contains(raw, "@") && u.User == nil {
		return nil, ErrUnparseable
	}
	if strings.Contains(u.Host+u.Path+u.RawQuery+u.Fragment, "@") {
		return nil, ErrUnparseable
	}
	return u, nil
}

// Redact shows a Redis URL with its password masked, or a placeholder.
func Redact(raw string) string {
	u, err := parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

// Scrub removes the password of raw, as written and decoded, from msg (an
// error's text that may quote it).
func Scrub(msg, raw string) string {
	u, err := parse(raw)
	if err != nil {
		return "(not shown: REDIS_URL " + ErrUnparseable.Error() + ")"
	}
	return scrub(msg, u)
}

func scrub(msg string, u *url.URL) string {
	if u.User == nil {
		return msg
	}
	if pw, ok := u.User.Password(); ok && pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		for _, enc := range []string{url.PathEscape(pw), url.QueryEscape(pw)} {
			msg = strings.ReplaceAll(msg, enc, "xxxxx")
		}
	}
	return msg
}
