package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gorm-envelope/envelope/rotate"
)

// progress shows how far a run is: a bar redrawn in place on a terminal,
// otherwise a plain line at most every few seconds. It writes to stderr.
type progress struct {
	w       io.Writer
	tty     bool
	label   string
	unit    string // what is counted: "profiles", "rows"
	every   time.Duration
	start   time.Time
	last    time.Time
	drawn   bool
	scanned int
	total   int
}

func newProgress(e *env, label string) *progress {
	return &progress{w: e.stderr, tty: e.tty, label: label, unit: "profiles", every: 5 * time.Second, start: time.Now()}
}

// update is a rotate.Options.Progress callback.
func (p *progress) update(pr rotate.Progress) {
	p.scanned, p.total = pr.Scanned, pr.Total
	now := time.Now()
	if p.tty {
		if now.Sub(p.last) < 100*time.Millisecond && pr.Scanned < pr.Total {
			return
		}
		p.last = now
		fmt.Fprintf(p.w, "\r%s", p.bar(now))
		p.drawn = true
		return
	}
	if p.last.IsZero() {
		p.last = p.start
	}
	if now.Sub(p.last) >= p.every {
		p.last = now
		fmt.Fprintf(p.w, "%s: %d/%d %s (%d%%)\n", p.label, pr.Scanned, pr.Total, p.unit, percent(pr.Scanned, pr.Total))
	}
}

// finish ends the bar's line.
func (p *progress) finish() {
	if p.tty && p.drawn {
		fmt.Fprintf(p.w, "\r%s\n", p.bar(time.Now()))
	}
}

func (p *progress) bar(now time.Time) string {
	const width = 30
	pct := percent(p.scanned, p.total)
	fill := pct * width / 100
	rate := 0.0
	if el := now.Sub(p.start).Seconds(); el > 0 {
		rate = float64(p.scanned) / el
	}
	return fmt.Sprintf("%s [%s%s] %3d%% %d/%d %.0f/s ", p.label,
		strings.Repeat("=", fill), strings.Repeat(" ", width-fill), pct, p.scanned, p.total, rate)
}

func percent(n, total int) int {
	if total <= 0 || n >= total {
		return 100
	}
	return n * 100 / total
}
