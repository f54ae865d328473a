package main

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/courier-dev/courier/pkg/webex"
)

// Render returns the report as markdown for the Webex app and as its
// plain-text fallback (for clients and notifications that do not render
// markdown). The markdown uses only what Webex renders (see pkg/webex): a
// bold title, the counts per priority and age bucket in a fenced code block
// with aligned columns, and the oldest tickets as a list. Both forms list the
// same tickets, oldest first: at most maxList, fewer if a form would pass
// Webex's 7439 bytes, ending with "... and N more" when some are left out.
func (r *TeamReport) Render(now time.Time, maxList int) (markdown, text string) {
	date := now.Format("Mon 2 Jan 2006")
	counts := r.countsBlock()
	var md, txt strings.Builder
	fmt.Fprintf(&md, "**Aging tickets: %s** (%d open, %s)\n\n", escape(r.Team), r.Total, date)
	fmt.Fprintf(&txt, "Aging tickets: %s (%d open, %s)\n\n", oneLine(r.Team), r.Total, date)
	md.WriteString("Open tickets by priority and age in days:\n\n```\n" + counts + "```\n\n**Oldest open tickets:**\n\n")
	txt.WriteString("Open tickets by priority and age in days:\n\n" + counts + "\nOldest open tickets:\n\n")
	listed := 0
	for _, t := range r.Oldest {
		if listed == maxList {
			break
		}
		age := ageOf(now.Sub(t.OpenedAt))
		mdLine := fmt.Sprintf("- **%s** %s (%s, %s, %s)\n", escape(t.ID), escape(t.Title), escape(t.Priority), age,
			cmp.Or(escape(t.Assignee), "_unassigned_"))
		txtLine := fmt.Sprintf("- %s %s (%s, %s, %s)\n", oneLine(t.ID), oneLine(t.Title), oneLine(t.Priority), age,
			cmp.Or(oneLine(t.Assignee), "unassigned"))
		more := len(moreLine(r.Total - listed - 1))
		if md.Len()+len(mdLine)+more > webex.MaxTextBytes || txt.Len()+len(txtLine)+more > webex.MaxTextBytes {
			break
		}
		md.WriteString(mdLine)
		txt.WriteString(txtLine)
		listed++
	}
	if rest := r.Total - listed; rest > 0 {
		md.WriteString(moreLine(rest))
		txt.WriteString(moreLine(rest))
	}
	return md.String(), txt.String()
}

func moreLine(n int) string { return fmt.Sprintf("\n... and %d more\n", n) }

// countsBlock is the per-priority, per-bucket counts with a total row and
// column, numbers right-aligned under their headers:
//
//	priority  0-2  3-7  8-30  >30  total
//	P1          2    1     0    3      6
//	all        12    8     9   35     64
func (r *TeamReport) countsBlock() string {
	header := append([]string{"priority"}, r.Buckets.ShortLabels()...)
	header = append(header, "total")
	rows := [][]string{header}
	prios := make([]string, 0, len(r.ByPrio))
	for p := range r.ByPrio {
		prios = append(prios, p)
	}
	slices.Sort(prios)
	row := func(name string, counts []int) []string {
		cells, sum := []string{name}, 0
		for _, n := range counts {
			cells = append(cells, strconv.Itoa(n))
			sum += n
		}
		return append(cells, strconv.Itoa(sum))
	}
	for _, p := range prios {
		rows = append(rows, row(cmp.Or(codeCell(p), "(none)"), r.ByPrio[p]))
	}
	rows = append(rows, row("all", r.Counts))
	widths := make([]int, len(header))
	for _, cells := range rows {
		for i, c := range cells {
			widths[i] = max(widths[i], len(c))
		}
	}
	var b strings.Builder
	for _, cells := range rows {
		line := fmt.Sprintf("%-*s", widths[0], cells[0])
		for i, c := range cells[1:] {
			line += fmt.Sprintf("  %*s", widths[i+1], c)
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	return b.String()
}

// ageOf is an age in whole elapsed days: "0 days", "1 day", "152 days".
func ageOf(d time.Duration) string {
	if days := int(d / (24 * time.Hour)); days != 1 {
		return fmt.Sprintf("%d days", days)
	}
	return "1 day"
}

// oneLine keeps a field on its line: line breaks and tabs become spaces.
var oneLine = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ", "\t", " ").Replace

// escape makes a field plain text in markdown: on one line, with the
// characters that would start formatting, a tag or an image backslash-escaped.
func escape(s string) string {
	return markdownEscaper.Replace(oneLine(s))
}

var markdownEscaper = strings.NewReplacer(`\`, `\\`, "`", "\\`", `*`, `\*`, `_`, `\_`, `[`, `\[`, `]`, `\]`, `<`, `\<`)

// codeCell keeps a field inside a code block: on one line, without the
// backticks that could close the block.
func codeCell(s string) string { return strings.ReplaceAll(oneLine(s), "`", "'") }

// Card renders the report as an adaptive card (the markdown is its fallback).
func (r *TeamReport) Card(now time.Time) map[string]any {
	facts := []any{}
	for i, l := range r.Buckets.Labels() {
		facts = append(facts, map[string]any{"title": l, "value": strconv.Itoa(r.Counts[i])})
	}
	return map[string]any{
		"type": "AdaptiveCard", "version": "1.3",
		"body": []any{
			map[string]any{"type": "TextBlock", "text": "Aging tickets: " + r.Team, "weight": "Bolder", "size": "Medium"},
			map[string]any{"type": "TextBlock", "text": fmt.Sprintf("%d open, %s", r.Total, now.Format("Mon 2 Jan 2006")), "isSubtle": true},
			map[string]any{"type": "FactSet", "facts": facts},
		},
	}
}
