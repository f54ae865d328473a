package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/redisurl"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "tok"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisURL != "redis://127.0.0.1:6379/0" || c.Concurrency != 10 || c.Queues["courier"] != 1 || c.Tokens[""] != "tok" ||
		c.Policy.MaxAttempts != 3 || c.Policy.InitialDelay != 2*time.Second || c.Budget != 20*time.Second || c.AdminAddr != "127.0.0.1:8080" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestLoadBotsAndFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "reports.token")
	if err := os.WriteFile(file, []byte("tok-reports\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load([]string{"-bots", "alerts,reports", "-queues", "courier:6,bulk:1", "-concurrency", "20"}, env(map[string]string{
		"WEBEX_TOKEN":                         "tok-default",
		"COURIER_BOT_ALERTS_TOKEN":            "tok-alerts",
		"COURIER_BOT_REPORTS_TOKEN_FILE":      file,
		"COURIER_CONCURRENCY":                 "5", // the flag wins
		"COURIER_TASK_CHECK_INTERVAL":         "20ms",
		"COURIER_DELAYED_TASK_CHECK_INTERVAL": "2s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Tokens["alerts"] != "tok-alerts" || c.Tokens["reports"] != "tok-reports" || c.Tokens[""] != "tok-default" ||
		c.Queues["courier"] != 6 || c.Queues["bulk"] != 1 || c.Concurrency != 20 || c.TaskCheckInterval != 20*time.Millisecond || c.DelayedInterval != 2*time.Second {
		t.Fatalf("config: %+v", c)
	}
}

func TestLoadReportsEveryProblemWithoutSecrets(t *testing.T) {
	_, err := Load([]string{"-queues", "a:0"}, env(map[string]string{
		"REDIS_URL":             "redis://user:hunter2@127.0.0.1:6379/notadb",
		"WEBEX_TOKEN":           "tok",
		"WEBEX_TOKEN_FILE":      "/nonexistent",
		"COURIER_CONCURRENCY":   "lots",
		"COURIER_MAX_ATTEMPTS":  "0",
		"COURIER_LOG_FORMAT":    "xml",
		"COURIER_LOG_LEVEL":     "loud",
		"COURIER_BOTS":          "ops",
		"COURIER_BUDGET":        "1m",
		"WEBEX_BASE_URL":        "webexapis.com",
		"COURIER_REDIS_TIMEOUT": "soon",
	}))
	if err == nil {
		t.Fatal("want errors")
	}
	msg := err.Error()
	for _, want := range []string{
		"-queues: \"a:0\"", "COURIER_CONCURRENCY: want a whole number", "COURIER_MAX_ATTEMPTS is 0", "COURIER_LOG_FORMAT \"xml\"",
		"COURIER_LOG_LEVEL \"loud\"", "WEBEX_TOKEN and WEBEX_TOKEN_FILE are both set", `bot "ops": set COURIER_BOT_OPS_TOKEN`,
		"COURIER_BUDGET (1m0s) must be below COURIER_SHUTDOWN_TIMEOUT (30s)", "WEBEX_BASE_URL", "REDIS_URL redis://user:xxxxx@", "COURIER_REDIS_TIMEOUT",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "hunter2") {
		t.Fatalf("the password leaked:\n%s", msg)
	}
}

func TestReadmeDocumentsEveryVariable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range append(Envs(), "COURIER_BOT_<NAME>_TOKEN") {
		if !strings.Contains(string(readme), "`"+e+"`") {
			t.Errorf("README does not document %s", e)
		}
	}
}

func TestLoadRelayTokens(t *testing.T) {
	c, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "COURIER_BOTS": "reports", "COURIER_BOT_REPORTS_TOKEN": "r",
		"COURIER_RELAY_ADDR": "127.0.0.1:8081", "COURIER_RELAY_TOKENS": "rt1=default, rt2=reports"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.RelayTokens["rt1"] != "" || c.RelayTokens["rt2"] != "reports" || len(c.RelayTokens) != 2 {
		t.Fatalf("%v", c.RelayTokens)
	}
	_, err = Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "COURIER_RELAY_ADDR": "127.0.0.1:8081", "COURIER_RELAY_TOKENS": "rt1=ghost,bare"}))
	for _, want := range []string{`entry 1: bot "ghost" is not configured`, "entry 2: want token=bot"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
	if _, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "COURIER_RELAY_ADDR": "127.0.0.1:8081"})); err == nil {
		t.Error("a relay without tokens must be refused")
	}
}

func TestEmptyVariableTurnsAdminOff(t *testing.T) {
	c, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "COURIER_ADMIN_ADDR": ""}))
	if err != nil || c.AdminAddr != "" {
		t.Fatalf("admin addr %q, %v", c.AdminAddr, err)
	}
}

// A REDIS_URL whose password breaks the URL is reported without any part
// of the password.
func TestLoadNeverPrintsRedisPassword(t *testing.T) {
	for _, u := range []string{"redis://u:Zq%9pWv@db:6379/0", "redis://u:Zq7/Wv9Kx@db:6379/0", "redis://u:8613#4429@db:6379/0"} {
		_, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "REDIS_URL": u}))
		if err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
			t.Fatalf("%s: %v", u, err)
		}
		for _, piece := range []string{"%9p", "Zq7", "Wv9", "8613", "4429"} {
			if strings.Contains(err.Error(), piece) {
				t.Errorf("%s: the error shows %q: %v", u, piece, err)
			}
		}
	}
}

// Validation names the setting a user sets, and every setting it names is
// one the worker reads.
func TestValidationNamesSettings(t *testing.T) {
	envs := map[string]bool{}
	for _, e := range Envs() {
		envs[e] = true
	}
	for path, env := range settingNames {
		if !envs[env] {
			t.Errorf("%s is named %s, which the worker does not read", path, env)
		}
	}
	_, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "COURIER_REDELIVERY_BASE": "2h", "COURIER_BURST": "-1",
		"COURIER_POISON_LIMIT": "-2", "COURIER_MAX_REDELIVERIES": "-1"}))
	for _, want := range []string{"COURIER_REDELIVERY_CAP is 1h0m0s: must be at least COURIER_REDELIVERY_BASE (2h0m0s)",
		"COURIER_BURST is -1", "COURIER_POISON_LIMIT is -2", "COURIER_MAX_REDELIVERIES is -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	for _, field := range []string{"Schedule.Cap", " Cap ", "Burst is", "PoisonLimit"} {
		if err != nil && strings.Contains(err.Error(), field) {
			t.Errorf("the Go field %q is named:\n%v", field, err)
		}
	}
}

func TestLoadRecoveryAfter(t *testing.T) {
	c, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "tok"}))
	if err != nil || c.RecoveryAfter != 5*time.Second {
		t.Fatalf("default: %v %v, want 5s", c.RecoveryAfter, err)
	}
	for v, want := range map[string]time.Duration{"0": 0, "8s": 8 * time.Second} {
		c, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "tok", "COURIER_RECOVERY_AFTER": v}))
		if err != nil || c.RecoveryAfter != want {
			t.Errorf("COURIER_RECOVERY_AFTER=%s: %v %v, want %v", v, c.RecoveryAfter, err, want)
		}
	}
	_, err = Load(nil, env(map[string]string{"WEBEX_TOKEN": "tok", "COURIER_RECOVERY_AFTER": "2s"}))
	if err == nil || !strings.Contains(err.Error(), "COURIER_RECOVERY_AFTER is 2s: must be 0 (off) or at least 3s") {
		t.Fatalf("3s: %v", err)
	}
}

// A bad Redis mode, or a URL the mode does not take, is named, and the
// password does not show.
func TestLoadRedisMode(t *testing.T) {
	_, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "REDIS_MODE": "clustered"}))
	if err == nil || !strings.Contains(err.Error(), "REDIS_MODE: want auto, single, sentinel or cluster") {
		t.Errorf("REDIS_MODE=clustered: %v", err)
	}
	_, err = Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "REDIS_MODE": "cluster",
		"REDIS_URL": "redis://:Zq7Wv9Kx@s1:26379?master_name=m&password=Zq7Wv9Kx"}))
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") || !strings.Contains(err.Error(), "master_name") || strings.Contains(err.Error(), "Zq7Wv9Kx") {
		t.Errorf("a Sentinel URL in cluster mode: %v", err)
	}
	c, err := Load(nil, env(map[string]string{"WEBEX_TOKEN": "t", "REDIS_URL": "redis://s1:26379?master_name=m&addr=s2:26379"}))
	if err != nil || c.RedisMode != redisurl.ModeAuto {
		t.Errorf("a Sentinel URL: %v %+v", err, c)
	}
}
