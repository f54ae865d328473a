package monitor

import (
	"flag"
	"os"
	"strings"
	"testing"
)

// docs/OPERATIONS.md's table of cmd/monitor's settings names every variable
// and flag it reads.
func TestOperationsDocumentsEveryMonitorSetting(t *testing.T) {
	b, err := os.ReadFile("../../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, e := range Envs() {
		if e == "COURIER_ADMIN_PASSWORD_FILE" {
			e = "_FILE" // "`COURIER_ADMIN_PASSWORD` (or `_FILE`)"
		}
		if !strings.Contains(doc, "`"+e+"`") {
			t.Errorf("docs/OPERATIONS.md does not document %s", e)
		}
	}
	flags(&Config{}).FlagSet().VisitAll(func(f *flag.Flag) {
		if !strings.Contains(doc, "`-"+f.Name+"`") {
			t.Errorf("docs/OPERATIONS.md does not document -%s", f.Name)
		}
	})
}
