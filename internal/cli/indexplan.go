package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"

	"github.com/gorm-envelope/envelope/internal/blind"
)

var cmdIndexPlan = &command{
	name:  "index-plan",
	args:  "--rows N --distinct D",
	short: "recommend a blind index length for a table",
	long: `Recommends the length, in bits, of a blind index on a column of a table of N
rows holding D distinct values (after the index's transform), and prints the
range it was chosen from and what to expect at that length. Needs no database
and no key.

A blind index stores a truncated keyed hash of each value. The longer it is,
the fewer rows of other values a query returns; the shorter, the more values
share each index value, which keeps the index from showing which rows hold
equal values. The range is where both hold:

  at most MAX bits: at least 2 other values share a value's index value
  at least MIN bits: a query returns at most √N rows of other values

The recommendation is MAX, the longest length that still hides. With too few
distinct values (under about 2√N) the two conflict, and with fewer than 5 no
length hides; a note then says what the recommendation costs. A full 256-bit
index, which a unique constraint needs, shows exactly which rows are equal.
See docs/format.md.`,
	flags: func(fs *flag.FlagSet, o *opts) {
		fs.Uint64Var(&o.rows, "rows", 0, "`N`, the number of rows the table holds or will hold")
		fs.Uint64Var(&o.distinct, "distinct", 0, "`D`, the number of distinct values among them")
	},
	run: func(_ context.Context, e *env, o *opts) error {
		switch {
		case o.rows == 0:
			return usagef("index-plan: set --rows to the number of rows the table holds or will hold (at least 1)")
		case o.distinct == 0:
			return usagef("index-plan: set --distinct to the number of distinct values in the column (at least 1)")
		case o.distinct > o.rows:
			return usagef("index-plan: --distinct %d is more than --rows %d: a table holds at most as many distinct values as rows", o.distinct, o.rows)
		}
		p, err := blind.PlanBits(o.rows, o.distinct)
		if err != nil {
			return usagef("index-plan: %v", err)
		}
		printPlan(e.stdout, p)
		return nil
	},
	offline: true,
}

func printPlan(w io.Writer, p blind.Plan) {
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "%-17s "+format+"\n", append([]any{name}, args...)...)
	}
	row("rows", "%d", p.Rows)
	row("distinct values", "%d", p.Distinct)
	row("recommended", "%s", nbits(p.Bits))
	switch {
	case p.MaxBits == 0:
		row("range", "none: %d bits or more for false positives, and no length hides", p.MinBits)
	case p.MinBits > p.MaxBits:
		row("range", "none: %d bits or more for false positives, %d or fewer to hide", p.MinBits, p.MaxBits)
	default:
		row("range", "%d to %d bits", p.MinBits, p.MaxBits)
	}
	row("false positives", "%.2f rows of other values a query returns, at %s (want at most √rows = %s)", p.FalsePositives, nbits(p.Bits), sqrtText(p.Rows))
	row("coincidences", "%.2f other values share a value's index value, at %s (want at least 2)", p.Coincidences, nbits(p.Bits))
	if p.Note != "" {
		fmt.Fprintf(w, "note: %s\n", p.Note)
	}
}

func nbits(n int) string {
	if n == 1 {
		return "1 bit"
	}
	return fmt.Sprintf("%d bits", n)
}

// sqrtText is √n, with two decimals unless it is a whole number.
func sqrtText(n uint64) string {
	r := math.Sqrt(float64(n))
	if r == math.Trunc(r) {
		return fmt.Sprintf("%.0f", r)
	}
	return fmt.Sprintf("%.2f", r)
}
