// Package settings maps command-line flags and environment variables onto a
// configuration struct, one setting each with the same meaning: a flag
// -max-delay and its variable COURIER_MAX_DELAY. A flag wins over the
// variable, the variable over the default. Every bad value is reported at
// once, naming the flag, the variable and the rule.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Set is a group of settings.
type Set struct {
	fs   *flag.FlagSet
	list []*setting
}

type setting struct {
	flag, env, def, help string
	raw                  *string
	parse                func(string) error
}

// New starts a set for the command name.
func New(name string) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &Set{fs: fs}
}

// FlagSet is the underlying flag set (for usage output).
func (s *Set) FlagSet() *flag.FlagSet { return s.fs }

func (s *Set) add(name, env, def, help string, parse func(string) error) {
	usage := help
	if env != "" {
		usage += " (env " + env + ")"
	}
	st := &setting{flag: name, env: env, def: def, help: help, parse: parse}
	st.raw = s.fs.String(name, def, usage)
	s.list = append(s.list, st)
}

// String registers a string setting.
func (s *Set) String(p *string, name, env, def, help string) {
	s.add(name, env, def, help, func(v string) error { *p = v; return nil })
}

// Int registers an integer setting.
func (s *Set) Int(p *int, name, env string, def int, help string) {
	s.add(name, env, strconv.Itoa(def), help, func(v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want a whole number, got %q", v)
		}
		*p = n
		return nil
	})
}

// Float registers a number setting.
func (s *Set) Float(p *float64, name, env string, def float64, help string) {
	s.add(name, env, strconv.FormatFloat(def, 'g', -1, 64), help, func(v string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return fmt.Errorf("want a number, got %q", v)
		}
		*p = f
		return nil
	})
}

// Duration registers a duration setting ("1.5s", "2m", "1h").
func (s *Set) Duration(p *time.Duration, name, env string, def time.Duration, help string) {
	s.add(name, env, def.String(), help, func(v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want a duration such as 30s or 5m, got %q", v)
		}
		*p = d
		return nil
	})
}

// Bool registers a boolean setting.
func (s *Set) Bool(p *bool, name, env string, def bool, help string) {
	s.add(name, env, strconv.FormatBool(def), help, func(v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("want true or false, got %q", v)
		}
		*p = b
		return nil
	})
}

// Func registers a setting parsed by parse.
func (s *Set) Func(name, env, def, help string, parse func(string) error) {
	s.add(name, env, def, help, parse)
}

// Parse reads args and the environment (lookupEnv; nil means os.LookupEnv)
// and fills every setting, reporting all bad values at once. A variable set
// to the empty string counts as set (COURIER_ADMIN_ADDR= turns the admin
// server off). Boolean flags take a value (-dev=true) or none (-dev).
func (s *Set) Parse(args []string, lookupEnv func(string) (string, bool)) error {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	args = expandBoolFlags(args, s)
	// A command line that is not the set's (an unknown flag, a stray
	// argument) is one problem among the others: every setting is still
	// read, from the flags before it, the environment or its default, so
	// that checks of the values report real problems only.
	var errs []error
	if err := s.fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return err
	} else if err != nil {
		errs = append(errs, err)
	} else if s.fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q", s.fs.Arg(0)))
	}
	set := map[string]bool{}
	s.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, st := range s.list {
		v, from := *st.raw, "-"+st.flag
		if !set[st.flag] && st.env != "" {
			if e, ok := lookupEnv(st.env); ok {
				v, from = e, st.env
			}
		}
		if err := st.parse(v); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", from, err))
		}
	}
	return errors.Join(errs...)
}

// expandBoolFlags turns a bare boolean flag (-dev) into -dev=true, since all
// settings are registered as strings.
func expandBoolFlags(args []string, s *Set) []string {
	bools := map[string]bool{}
	for _, st := range s.list {
		if st.def == "true" || st.def == "false" {
			bools[st.flag] = true
		}
	}
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		name := strings.TrimLeft(a, "-")
		if strings.HasPrefix(a, "-") && !strings.Contains(name, "=") && bools[name] {
			a += "=true"
		}
		out = append(out, a)
	}
	return out
}

// Envs lists the environment variables of the set, for docs and tests.
func (s *Set) Envs() []string {
	var out []string
	for _, st := range s.list {
		if st.env != "" {
			out = append(out, st.env)
		}
	}
	return out
}

// Usage writes every setting: flag, variable, default, help.
func (s *Set) Usage(w io.Writer) {
	for _, st := range s.list {
		env := st.env
		if env == "" {
			env = "-"
		}
		fmt.Fprintf(w, "  -%-28s %-34s default %q\n      %s\n", st.flag, env, st.def, st.help)
	}
}

// Secret reads a secret (a token, a password) from the variable env or
// the file named by fileEnv; never both. Secrets are never flags: flags
// show in process lists.
func Secret(getenv func(string) string, env, fileEnv string) (string, error) {
	tok, file := strings.TrimSpace(getenv(env)), getenv(fileEnv)
	switch {
	case tok != "" && file != "":
		return "", fmt.Errorf("%s and %s are both set: use one", env, fileEnv)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("%s: %w", fileEnv, err)
		}
		if tok = strings.TrimSpace(string(b)); tok == "" {
			return "", fmt.Errorf("%s: %s is empty", fileEnv, file)
		}
	}
	return tok, nil
}
