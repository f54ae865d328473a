package settings

import (
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	var (
		name string
		n    int
		d    time.Duration
		b    bool
		f    float64
	)
	s := New("test")
	s.String(&name, "name", "T_NAME", "def", "a name")
	s.Int(&n, "count", "T_COUNT", 3, "a count")
	s.Duration(&d, "wait", "T_WAIT", time.Second, "a wait")
	s.Bool(&b, "dev", "T_DEV", false, "dev mode")
	s.Float(&f, "mult", "T_MULT", 2, "a multiplier")
	env := map[string]string{"T_NAME": "from-env", "T_COUNT": "7", "T_WAIT": "5m"}
	if err := s.Parse([]string{"-count", "9", "-dev"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if name != "from-env" || n != 9 || d != 5*time.Minute || !b || f != 2 {
		t.Fatalf("got %q %d %v %v %v", name, n, d, b, f)
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	var n int
	var d time.Duration
	var b bool
	s := New("test")
	s.Int(&n, "count", "T_COUNT", 3, "")
	s.Duration(&d, "wait", "T_WAIT", time.Second, "")
	s.Bool(&b, "dev", "T_DEV", false, "")
	env := map[string]string{"T_COUNT": "many", "T_DEV": "perhaps"}
	err := s.Parse([]string{"-wait", "soon"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	for _, want := range []string{`T_COUNT: want a whole number, got "many"`, `-wait: want a duration`, `T_DEV: want true or false`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

// A bad command line is reported, and the settings are read all the same:
// a caller's checks of the values do not add problems of values never read.
func TestParseReadsSettingsDespiteABadCommandLine(t *testing.T) {
	for _, args := range [][]string{{"stray"}, {"-nope"}, {"-count", "9", "-nope", "-count", "1"}} {
		var name string
		var n int
		s := New("test")
		s.String(&name, "name", "T_NAME", "def", "")
		s.Int(&n, "count", "T_COUNT", 3, "")
		err := s.Parse(args, func(k string) (string, bool) { return map[string]string{"T_COUNT": "7"}[k], k == "T_COUNT" })
		if err == nil {
			t.Errorf("%v: accepted", args)
		}
		want := 7
		if args[0] == "-count" {
			want = 9 // the flags before the bad one count
		}
		if name != "def" || n != want {
			t.Errorf("%v: got %q %d, want %q %d", args, name, n, "def", want)
		}
	}
}
