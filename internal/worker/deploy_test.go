package worker_test

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"go.yaml.in/yaml/v3"

	"github.com/courier-dev/courier/internal/monitor"
	"github.com/courier-dev/courier/internal/worker"
)

// The compose file loads with the compose-spec loader, and every variable it
// sets is one the binaries read.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	for _, profile := range []string{"prod", "dev"} {
		opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"}, cli.WithProfiles([]string{profile}), cli.WithName("courier"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := opts.LoadProject(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", profile, err)
		}
		redis, err := p.GetService("redis")
		if err != nil {
			t.Fatal(err)
		}
		if redis.HealthCheck == nil || !slices.Contains(redis.Command, "--appendonly") || len(redis.Volumes) != 1 || redis.Volumes[0].Source != "redis-data" {
			t.Fatalf("redis: %+v", redis)
		}
		if _, ok := p.Volumes["redis-data"]; !ok {
			t.Fatal("no named volume for Redis")
		}
		name := map[string]string{"prod": "worker", "dev": "worker-dev"}[profile]
		w, err := p.GetService(name)
		if err != nil {
			t.Fatalf("%s: %v", profile, err)
		}
		if w.Deploy == nil || w.Deploy.Replicas == nil || *w.Deploy.Replicas != 3 || w.HealthCheck == nil ||
			w.DependsOn["redis"].Condition != "service_healthy" {
			t.Fatalf("%s: %+v", name, w)
		}
		known := append(worker.Envs(), "REDIS_URL")
		for key := range w.Environment {
			if !slices.Contains(known, key) {
				t.Errorf("%s sets %s, which the worker does not read", name, key)
			}
		}
		// One operator UI for the fleet, reading only what cmd/monitor reads;
		// in prod behind basic auth with the password from a secret.
		mon, err := p.GetService(map[string]string{"prod": "monitor", "dev": "monitor-dev"}[profile])
		if err != nil {
			t.Fatalf("%s: %v", profile, err)
		}
		for key := range mon.Environment {
			if !slices.Contains(monitor.Envs(), key) {
				t.Errorf("%s sets %s, which the monitor does not read", mon.Name, key)
			}
		}
		if mon.HealthCheck == nil || !slices.Equal(mon.HealthCheck.Test, []string{"CMD", "/usr/local/bin/monitor", "ready"}) {
			t.Errorf("%s: no \"monitor ready\" health check: %+v", mon.Name, mon.HealthCheck)
		}
		if profile == "prod" && (mon.Environment["COURIER_ADMIN_USER"] == nil || mon.Environment["COURIER_ADMIN_PASSWORD_FILE"] == nil || len(mon.Secrets) != 1) {
			t.Errorf("the production monitor needs basic auth with a password file: %v", mon.Environment)
		}
		if profile == "prod" {
			if w.Environment["WEBEX_TOKEN"] != nil || len(w.Secrets) != 2 {
				t.Errorf("the production worker must take its token from a secret")
			}
			// It listens on the compose network: message text and pprof
			// behind basic auth, the password from a secret.
			if w.Environment["COURIER_ADMIN_USER"] == nil || w.Environment["COURIER_ADMIN_PASSWORD_FILE"] == nil || w.Environment["COURIER_ADMIN_PASSWORD"] != nil {
				t.Errorf("the production admin server needs basic auth with a password file: %v", w.Environment)
			}
			continue
		}
		for svc, envs := range map[string][]string{"webexsim": {"WEBEXSIM_ADDR", "WEBEXSIM_TOKENS", "WEBEXSIM_ROOMS"}, "enqueue": {"REDIS_URL", "COURIER_KEYED_RETENTION"}} {
			s, err := p.GetService(svc)
			if err != nil {
				t.Fatal(err)
			}
			for key := range s.Environment {
				if !slices.Contains(envs, key) {
					t.Errorf("%s sets %s, which it does not read", svc, key)
				}
			}
		}
	}
}

// The build context leaves out ./secrets/ (COPY . . would put the tokens in
// an image layer) and the git history.
func TestDockerignore(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var entries []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			entries = append(entries, strings.Trim(l, "/"))
		}
	}
	for _, want := range []string{"secrets", ".git"} {
		if !slices.Contains(entries, want) {
			t.Errorf(".dockerignore lacks %s: %q", want, entries)
		}
	}
}

// The example alerting rules parse and use only metrics courier exports.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert       string
				Expr        string
				For         string
				Labels      map[string]string
				Annotations map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	exported := []string{"courier_deliveries_total", "courier_bot_token_rejected", "courier_worker_ready", "asynq_tasks_enqueued_total",
		"courier_ordered_released_total"}
	metric := regexp.MustCompile(`\b(courier|asynq)_[a-z_]+`)
	var alerts []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: incomplete rule %+v", r.Alert, r)
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") {
				t.Errorf("%s: unbalanced expression", r.Alert)
			}
			for _, m := range metric.FindAllString(r.Expr, -1) {
				if !slices.Contains(exported, m) {
					t.Errorf("%s uses %s, which nothing exports", r.Alert, m)
				}
			}
		}
	}
	for _, want := range []string{"CourierDeadLetters", "CourierBotTokenRejected", "CourierRedeliveryBacklogGrowing", "CourierNoWorkerReady"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no %s alert", want)
		}
	}
}

// Prometheus scrapes the production workers with the admin server's user
// and the password from the same compose secret.
func TestPrometheusScrapesWithAuth(t *testing.T) {
	t.Parallel()
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"}, cli.WithProfiles([]string{"prod"}), cli.WithName("courier"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, err := p.GetService("worker")
	if err != nil {
		t.Fatal(err)
	}
	user, file := w.Environment["COURIER_ADMIN_USER"], w.Environment["COURIER_ADMIN_PASSWORD_FILE"]
	if user == nil || file == nil {
		t.Fatalf("the production admin server has no basic auth: %v", w.Environment)
	}
	b, err := os.ReadFile("../../deploy/prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName   string `yaml:"job_name"`
			BasicAuth *struct {
				Username     string `yaml:"username"`
				Password     string `yaml:"password"`
				PasswordFile string `yaml:"password_file"`
			} `yaml:"basic_auth"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, sc := range cfg.ScrapeConfigs {
		if sc.JobName != "courier-worker" {
			continue
		}
		switch ba := sc.BasicAuth; {
		case ba == nil:
			t.Fatal("courier-worker is scraped without basic auth: the production admin server answers 401")
		case ba.Username != *user || ba.PasswordFile != *file || ba.Password != "":
			t.Fatalf("basic_auth %+v, want user %q and password_file %q (the compose secret), no inline password", *ba, *user, *file)
		}
		return
	}
	t.Fatal("no courier-worker scrape job")
}
