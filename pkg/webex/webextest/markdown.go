package webextest

import (
	"cmp"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"
)

// Kinds of markdown that Webex shows as typed instead of rendering it.
const (
	LiteralTable = "table" // a pipe table: header row, then a |---| row
	LiteralHTML  = "html"  // a raw HTML tag or comment: <b>, </td>, <br/>, <!-- -->
	LiteralImage = "image" // an image: ![alt](url) or ![alt][ref]
)

// Literal is a piece of a message's markdown that the Webex app would show
// literally (a wall of pipes, a visible tag) rather than formatted.
type Literal struct {
	// Kind is LiteralTable, LiteralHTML or LiteralImage.
	Kind string `json:"kind"`
	// Line is the 1-based line of the markdown where it starts.
	Line int `json:"line"`
	// Text is that line, cut to at most 80 bytes.
	Text string `json:"text"`
}

var (
	// htmlTag is an opening, closing or self-closing tag, or a comment.
	// Webex mentions (<@personEmail:…>, <@all>) and autolinks
	// (<https://…>) do not match: a tag name is followed by a space, "/"
	// or ">".
	htmlTag = regexp.MustCompile(`<(?:/?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|!--)`)
	image   = regexp.MustCompile(`!\[[^\]]*\][(\[]`)
	// delimiterRow is a table's second row: cells of dashes, optionally
	// with alignment colons, separated by at least one pipe.
	delimiterRow = regexp.MustCompile(`^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$`)
	// fence opens or closes a fenced code block (up to 3 spaces indented).
	fence = regexp.MustCompile("^ {0,3}(`{3,}|~{3,})")
)

// FindLiterals returns the parts of markdown that Webex shows literally, in
// order: tables, raw HTML and images, none of which Webex renders in
// messages. What is inside a fenced code block or an inline code span is
// meant literally and is not reported, and neither is a backslash-escaped
// "<" or "!". An empty result means Webex renders the whole message.
func FindLiterals(markdown string) []Literal {
	var found []Literal
	add := func(kind string, line int, text string) {
		if len(text) > 80 {
			n := 80
			for !utf8.RuneStart(text[n]) {
				n--
			}
			text = text[:n]
		}
		found = append(found, Literal{Kind: kind, Line: line, Text: text})
	}
	open := ""               // the fence of the code block we are in
	prev, prevLine := "", "" // the line before, without and with its code spans
	for i, line := range strings.Split(markdown, "\n") {
		if open != "" {
			if f := fence.FindStringSubmatch(line); f != nil && f[1][0] == open[0] && len(f[1]) >= len(open) &&
				strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(line), open[:1])) == "" {
				open = ""
			}
			prev = ""
			continue
		}
		if f := fence.FindStringSubmatch(line); f != nil {
			open, prev = f[1], ""
			continue
		}
		prose := withoutCode(line)
		if strings.Contains(prose, "|") && strings.Contains(prev, "|") && delimiterRow.MatchString(prose) {
			add(LiteralTable, i, prevLine) // the table starts at its header row
		}
		if htmlTag.MatchString(unescaped(prose, '<')) {
			add(LiteralHTML, i+1, line)
		}
		if image.MatchString(unescaped(prose, '!')) {
			add(LiteralImage, i+1, line)
		}
		prev, prevLine = prose, line
	}
	return found
}

// withoutCode blanks the inline code spans of a line: a run of backticks up
// to the next run of the same length.
func withoutCode(line string) string {
	var b strings.Builder
	for {
		start := strings.IndexByte(line, '`')
		if start < 0 {
			return b.String() + line
		}
		n := len(line[start:]) - len(strings.TrimLeft(line[start:], "`"))
		end := closingRun(line[start+n:], n)
		if end < 0 {
			// An unclosed run is literal backticks.
			b.WriteString(line[:start+n])
			line = line[start+n:]
			continue
		}
		b.WriteString(line[:start])
		b.WriteString(strings.Repeat(" ", n+end+n))
		line = line[start+n+end+n:]
	}
}

// closingRun is the offset in s of the first run of exactly n backticks, or
// -1.
func closingRun(s string, n int) int {
	for i := 0; i < len(s); {
		if s[i] != '`' {
			i++
			continue
		}
		j := i
		for j < len(s) && s[j] == '`' {
			j++
		}
		if j-i == n {
			return i
		}
		i = j
	}
	return -1
}

// unescaped drops every backslash-escaped c from s (and so what follows
// from it: "\<b>" is the text "<b>", not a tag).
func unescaped(s string, c byte) string {
	return strings.ReplaceAll(s, `\`+string(c), " ")
}

// findLiterals marks a stored message's markdown that Webex would show
// literally, with a warning so that a person watching the dev mode or a
// test's log sees it.
func (s *Sim) findLiterals(m *Stored) []Literal {
	found := FindLiterals(m.Markdown)
	if len(found) == 0 {
		return nil
	}
	kinds := make([]string, 0, len(found))
	for _, l := range found {
		if !slices.Contains(kinds, l.Kind) {
			kinds = append(kinds, l.Kind)
		}
	}
	s.logger.Warn("markdown that Webex shows literally", "message_id", m.ID, "destination", cmp.Or(m.RoomID, m.ToPersonID, m.ToPersonEmail),
		"kinds", strings.Join(kinds, ","), "line", found[0].Line)
	return found
}
