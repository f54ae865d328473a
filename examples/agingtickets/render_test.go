package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/courier-dev/courier/pkg/webex"
	"github.com/courier-dev/courier/pkg/webex/webextest"
)

var reportTime = time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)

func TestRender(t *testing.T) {
	t.Parallel()
	day := 24 * time.Hour
	ts := []Ticket{
		{ID: "T-1", Title: "Login fails", Assignee: "ana", Team: "web", Priority: "P1", OpenedAt: reportTime.Add(-40 * day)},
		{ID: "T-2", Title: "Slow search", Team: "web", Priority: "P2", OpenedAt: reportTime.Add(-day)},
		{ID: "T-3", Title: "Typo", Assignee: "bo", Team: "web", Priority: "P2", OpenedAt: reportTime.Add(-5 * day)},
	}
	reports, _ := Build(ts, DefaultBuckets, reportTime, map[string]string{"web": "room"})
	md, text := reports[0].Render(reportTime, 2)
	wantMD := "**Aging tickets: web** (3 open, Sat 28 Nov 2026)\n\n" +
		"Open tickets by priority and age in days:\n\n" +
		"```\n" +
		"priority  0-2  3-7  8-30  >30  total\n" +
		"P1          0    0     0    1      1\n" +
		"P2          1    1     0    0      2\n" +
		"all         1    1     0    1      3\n" +
		"```\n\n" +
		"**Oldest open tickets:**\n\n" +
		"- **T-1** Login fails (P1, 40 days, ana)\n" +
		"- **T-3** Typo (P2, 5 days, bo)\n" +
		"\n... and 1 more\n"
	if md != wantMD {
		t.Errorf("markdown:\n%s\nwant:\n%s", md, wantMD)
	}
	wantText := "Aging tickets: web (3 open, Sat 28 Nov 2026)\n\n" +
		"Open tickets by priority and age in days:\n\n" +
		"priority  0-2  3-7  8-30  >30  total\n" +
		"P1          0    0     0    1      1\n" +
		"P2          1    1     0    0      2\n" +
		"all         1    1     0    1      3\n" +
		"\nOldest open tickets:\n\n" +
		"- T-1 Login fails (P1, 40 days, ana)\n" +
		"- T-3 Typo (P2, 5 days, bo)\n" +
		"\n... and 1 more\n"
	if text != wantText {
		t.Errorf("text:\n%s\nwant:\n%s", text, wantText)
	}
	md, text = reports[0].Render(reportTime, 15)
	if !strings.HasSuffix(md, "- **T-2** Slow search (P2, 1 day, _unassigned_)\n") || !strings.HasSuffix(text, "- T-2 Slow search (P2, 1 day, unassigned)\n") {
		t.Errorf("a complete list ends with its last ticket:\n%s\n%s", md, text)
	}
}

// Every sample team's report uses only markdown that Webex renders, even
// with ticket fields full of markdown and HTML, and its text fallback carries
// no markup.
func TestReportHasNothingWebexShowsLiterally(t *testing.T) {
	t.Parallel()
	ts, err := LoadTickets("sample/tickets.csv")
	if err != nil {
		t.Fatal(err)
	}
	hostile := Ticket{ID: "T-<1>", Title: "Table | a | b |\n|---|---|\n<b>bold</b> ![img](x.png) `code` **x** _y_ [z](u)",
		Assignee: "ana_silva", Team: "platform", Priority: "P1`", OpenedAt: reportTime.Add(-1000 * 24 * time.Hour)}
	ts = append(ts, hostile)
	cfg, err := LoadConfig("sample/teams.json")
	if err != nil {
		t.Fatal(err)
	}
	reports, _ := Build(ts, DefaultBuckets, reportTime, cfg.Rooms)
	for _, r := range reports {
		md, text := r.Render(reportTime, 15)
		if lit := webextest.FindLiterals(md); lit != nil {
			t.Errorf("%s: Webex shows literally %+v in\n%s", r.Team, lit, md)
		}
		if strings.Count(md, "```\n") != 2 || strings.Count(md, "\n- **") < 1 {
			t.Errorf("%s: no code block or list:\n%s", r.Team, md)
		}
		if strings.Contains(text, "**Aging") || strings.Contains(text, "- **") || strings.Contains(text, "```") || strings.Contains(text, "_unassigned_") {
			t.Errorf("%s: markup in the text fallback:\n%s", r.Team, text)
		}
	}
	md, text := reports[slices.IndexFunc(reports, func(r *TeamReport) bool { return r.Team == "platform" })].Render(reportTime, 1)
	if !strings.Contains(md, "\n- **T-\\<1>** Table | a | b | |---|---| \\<b>bold\\</b> !\\[img\\](x.png) \\`code\\` \\*\\*x\\*\\* \\_y\\_ \\[z\\](u) (P1\\`, 1000 days, ana\\_silva)\n") {
		t.Errorf("hostile ticket not escaped onto one line:\n%s", md)
	}
	if !strings.Contains(text, "\n- T-<1> Table | a | b | |---|---| <b>bold</b> ![img](x.png) `code` **x** _y_ [z](u) (P1`, 1000 days, ana_silva)\n") ||
		!strings.Contains(text, "\nP1'  ") {
		t.Errorf("hostile ticket not as typed on one line in the text:\n%s", text)
	}
}

func TestLongReportStaysUnderTheLimit(t *testing.T) {
	t.Parallel()
	var ts []Ticket
	for i := range 500 {
		ts = append(ts, Ticket{ID: fmt.Sprintf("TCK-%d", i), Title: strings.Repeat("very long title ", 8), Team: "t", Priority: "P2",
			OpenedAt: reportTime.Add(-time.Duration(i) * time.Hour)})
	}
	reports, _ := Build(ts, DefaultBuckets, reportTime, map[string]string{"t": "room"})
	md, text := reports[0].Render(reportTime, 1000)
	if len(md) > webex.MaxTextBytes || len(text) > webex.MaxTextBytes {
		t.Fatalf("markdown %d bytes, text %d bytes", len(md), len(text))
	}
	listed := strings.Count(md, "\n- **TCK-")
	if !strings.HasSuffix(md, fmt.Sprintf("... and %d more\n", 500-listed)) || listed < 10 || listed != strings.Count(text, "\n- TCK-") {
		t.Fatalf("listed %d (text %d), ending %q", listed, strings.Count(text, "\n- TCK-"), md[len(md)-40:])
	}
	if !strings.HasSuffix(text, fmt.Sprintf("... and %d more\n", 500-listed)) {
		t.Fatalf("text ending %q", text[len(text)-40:])
	}
	if err := (&webex.Message{RoomID: "r", Markdown: md, Text: text}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// docs/PRODUCERS.md shows the exact markdown of the payments team's
// report; it must stay what the code sends.
func TestDocsShowTheReport(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../docs/PRODUCERS.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "### What the team sees\n")
	_, shown, _ := strings.Cut(section, "````markdown\n")
	shown, _, found := strings.Cut(shown, "````\n")
	if !found {
		t.Fatal("docs/PRODUCERS.md: no ````markdown block under \"What the team sees\"")
	}
	ts, err := LoadTickets("sample/tickets.csv")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig("sample/teams.json")
	if err != nil {
		t.Fatal(err)
	}
	reports, _ := Build(ts, DefaultBuckets, reportTime, cfg.Rooms)
	md, _ := reports[slices.IndexFunc(reports, func(r *TeamReport) bool { return r.Team == "payments" })].Render(reportTime, 15)
	if shown != md {
		t.Fatalf("docs/PRODUCERS.md shows:\n%s\nthe report is:\n%s", shown, md)
	}
}
