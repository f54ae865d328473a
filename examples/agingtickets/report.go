package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Ticket is one open ticket.
type Ticket struct {
	ID       string    `json:"id"`
	Title    string    `json:"title"`
	Assignee string    `json:"assignee"`
	Team     string    `json:"team"`
	Priority string    `json:"priority"`
	OpenedAt time.Time `json:"opened_at"`
}

// Config is the team-to-room mapping and report settings (teams.json).
type Config struct {
	// Report names the report; it starts every idempotency key.
	Report string `json:"report"`
	// Timezone decides the report's date (and so its key). Default UTC.
	Timezone string `json:"timezone"`
	// Rooms maps each team to its Webex room.
	Rooms map[string]string `json:"rooms"`
}

// LoadConfig reads the mapping file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.Report == "" {
		c.Report = "aging-tickets"
	}
	if len(c.Rooms) == 0 {
		return nil, fmt.Errorf("%s: rooms: map each team to a room id", path)
	}
	return &c, nil
}

// LoadTickets reads tickets from a CSV file (with a header row) or a JSON
// array, by the file's extension. Every bad row is reported with its number.
func LoadTickets(path string) ([]Ticket, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if strings.EqualFold(filepath.Ext(path), ".json") {
		var ts []Ticket
		if err := json.NewDecoder(f).Decode(&ts); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return ts, nil
	}
	return readCSV(f)
}

func readCSV(r io.Reader) ([]Ticket, error) {
	cr := csv.NewReader(r)
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("csv header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(h)] = i
	}
	for _, want := range []string{"id", "title", "assignee", "team", "priority", "opened_at"} {
		if _, ok := col[want]; !ok {
			return nil, fmt.Errorf("csv header lacks %q", want)
		}
	}
	var ts []Ticket
	var errs []error
	for row := 2; ; row++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("csv row %d: %w", row, err)
		}
		opened, err := time.Parse(time.RFC3339, rec[col["opened_at"]])
		if err != nil {
			errs = append(errs, fmt.Errorf("csv row %d: opened_at %q: want RFC 3339", row, rec[col["opened_at"]]))
			continue
		}
		ts = append(ts, Ticket{ID: rec[col["id"]], Title: rec[col["title"]], Assignee: rec[col["assignee"]],
			Team: rec[col["team"]], Priority: rec[col["priority"]], OpenedAt: opened})
	}
	return ts, errors.Join(errs...)
}

// Buckets are upper bounds of age in whole days: {2, 7, 30} gives 0-2,
// 3-7, 8-30 and over 30.
type Buckets []int

// DefaultBuckets is 0-2, 3-7, 8-30, over 30 days.
var DefaultBuckets = Buckets{2, 7, 30}

// ParseBuckets reads "2,7,30".
func ParseBuckets(s string) (Buckets, error) {
	var b Buckets
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 0 || (len(b) > 0 && n <= b[len(b)-1]) {
			return nil, fmt.Errorf("buckets %q: want increasing whole days, e.g. 2,7,30", s)
		}
		b = append(b, n)
	}
	return b, nil
}

// Labels names the buckets, youngest first: "0-2 days" … "over 30 days".
func (b Buckets) Labels() []string { return b.labels("%d-%d days", "over %d days") }

// ShortLabels names the buckets for column headers: "0-2" … ">30".
func (b Buckets) ShortLabels() []string { return b.labels("%d-%d", ">%d") }

// labels formats each bucket's range with bounded, the last with over.
func (b Buckets) labels(bounded, over string) []string {
	out := make([]string, 0, len(b)+1)
	lo := 0
	for _, hi := range b {
		out = append(out, fmt.Sprintf(bounded, lo, hi))
		lo = hi + 1
	}
	return append(out, fmt.Sprintf(over, b[len(b)-1]))
}

// Of is the index of the bucket for a ticket opened at opened, seen at now.
// Age is counted in whole elapsed days (24 h each), so time zones do not
// matter: a ticket exactly 2 days old is in 0-2, one a second short of 3
// days too.
func (b Buckets) Of(opened, now time.Time) int {
	days := int(now.Sub(opened) / (24 * time.Hour))
	for i, hi := range b {
		if days <= hi {
			return i
		}
	}
	return len(b)
}

// TeamReport is one team's summary.
type TeamReport struct {
	Team    string
	Counts  []int            // per bucket
	ByPrio  map[string][]int // priority → per bucket
	Oldest  []Ticket         // oldest first
	Total   int
	Buckets Buckets
}

// Build groups tickets by team, for the teams in rooms (others are counted
// in skipped).
func Build(tickets []Ticket, b Buckets, now time.Time, rooms map[string]string) (reports []*TeamReport, skipped int) {
	byTeam := map[string]*TeamReport{}
	for _, t := range tickets {
		if _, ok := rooms[t.Team]; !ok {
			skipped++
			continue
		}
		r := byTeam[t.Team]
		if r == nil {
			r = &TeamReport{Team: t.Team, Counts: make([]int, len(b)+1), ByPrio: map[string][]int{}, Buckets: b}
			byTeam[t.Team] = r
		}
		i := b.Of(t.OpenedAt, now)
		r.Counts[i]++
		if r.ByPrio[t.Priority] == nil {
			r.ByPrio[t.Priority] = make([]int, len(b)+1)
		}
		r.ByPrio[t.Priority][i]++
		r.Oldest = append(r.Oldest, t)
		r.Total++
	}
	for _, r := range byTeam {
		sort.SliceStable(r.Oldest, func(i, j int) bool { return r.Oldest[i].OpenedAt.Before(r.Oldest[j].OpenedAt) })
		reports = append(reports, r)
	}
	sort.Slice(reports, func(i, j int) bool { return reports[i].Team < reports[j].Team })
	return reports, skipped
}

// Key is the report's idempotency key for a team on a day: a re-run on the
// same day (in the report's time zone) is a duplicate.
func Key(report, team string, now time.Time, loc *time.Location) string {
	return report + "/" + team + "/" + now.In(loc).Format("2006-01-02")
}
