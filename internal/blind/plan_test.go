package blind

import (
	"math"
	"strings"
	"testing"
)

func TestPlanBits(t *testing.T) {
	for i, tc := range []struct {
		rows, distinct   uint64
		min, max, bits   int
		fp, coincidences float64
		note             string // a substring of Note; "" for no note
	}{
		// Unique values: (D-1)/2^L >= 2 up to L = 12 (9999/4096 = 2.44;
		// at 13 bits, 1.22); 9999/2^L <= √10000 = 100 from L = 7
		// (9999/128 = 78; at 6 bits, 156).
		{10_000, 10_000, 7, 12, 12, 9999.0 / 4096, 9999.0 / 4096, ""},
		// 999999/2^18 = 3.81 >= 2 (at 19 bits, 1.91); 999999/2^10 = 977
		// <= 1000 (at 9 bits, 1953).
		{1_000_000, 1_000_000, 10, 18, 18, 999999.0 / 262144, 999999.0 / 262144, ""},
		// Two values: at 1 bit the other value shares the index value with
		// probability 1/2, so no length hides; 50 rows of the other value
		// over 2^L <= 10 from L = 3.
		{100, 2, 3, 0, 3, 6.25, 0.125, "2 distinct values are too few to hide"},
		// 1000 values in a million rows: hiding stops at 8 bits (999/256 =
		// 3.9), but false positives reach √R = 1000 only at 10 (999000/1024
		// = 975.6): hiding wins, at 3902 false positives a query.
		{1_000_000, 1000, 10, 8, 8, 999000.0 / 256, 999.0 / 256, "at 8 bits a query returns about 3902 rows of other values"},
		// The smallest tables: 5 distinct values hide at 1 bit (4/2 = 2),
		// 4 do not (3/2).
		{5, 5, 1, 1, 1, 2, 2, ""},
		{4, 4, 1, 0, 1, 1.5, 1.5, "4 distinct values are too few"},
		{1, 1, 1, 0, 1, 0, 0, "1 distinct value is too few"},
		{1000, 1, 1, 0, 1, 0, 0, "1 distinct value is too few"},
		// Exactly on the bounds: 16 rows of 2 values, 8/2^L <= 4 at L = 1;
		// 9 distinct values, 8/2^2 = 2.
		{16, 2, 1, 0, 1, 4, 0.5, "too few"},
		{9, 9, 2, 2, 2, 2, 2, ""},
		// 10 values in 50 rows: hiding stops at 2 bits (9/4), false
		// positives reach √50 = 7.07 at 3 (45/8 = 5.6).
		{50, 10, 3, 2, 2, 11.25, 2.25, "within √rows = 7.07 (at least 3 bits): at 2 bits a query returns about 11 rows"},
		// The largest table: 2^64-1 distinct values, 62 bits
		// ((2^64-2)/2^62 is just under 4; at 63 bits, just under 2).
		{math.MaxUint64, math.MaxUint64, 32, 62, 62, 4, 4, ""},
	} {
		p, err := PlanBits(tc.rows, tc.distinct)
		if err != nil {
			t.Errorf("#%d: PlanBits(%d, %d): %v", i, tc.rows, tc.distinct, err)
			continue
		}
		if p.Rows != tc.rows || p.Distinct != tc.distinct || p.MinBits != tc.min || p.MaxBits != tc.max || p.Bits != tc.bits {
			t.Errorf("#%d: PlanBits(%d, %d): %d rows, %d distinct, range %d to %d, bits %d; want range %d to %d, bits %d",
				i, tc.rows, tc.distinct, p.Rows, p.Distinct, p.MinBits, p.MaxBits, p.Bits, tc.min, tc.max, tc.bits)
		}
		if !near(p.FalsePositives, tc.fp) || !near(p.Coincidences, tc.coincidences) {
			t.Errorf("#%d: PlanBits(%d, %d): %v false positives, %v coincidences; want %v, %v",
				i, tc.rows, tc.distinct, p.FalsePositives, p.Coincidences, tc.fp, tc.coincidences)
		}
		if (tc.note == "") != (p.Note == "") || !strings.Contains(p.Note, tc.note) || strings.Contains(p.Note, "\n") {
			t.Errorf("#%d: PlanBits(%d, %d): note %q, want one containing %q", i, tc.rows, tc.distinct, p.Note, tc.note)
		}
		if (p.MinBits > p.MaxBits) != (p.Note != "") {
			t.Errorf("#%d: PlanBits(%d, %d): range %d to %d with note %q", i, tc.rows, tc.distinct, p.MinBits, p.MaxBits, p.Note)
		}
		if err := CheckBits(p.Bits); err != nil {
			t.Errorf("#%d: PlanBits(%d, %d): %v", i, tc.rows, tc.distinct, err)
		}
	}
}

// The recommendation follows the rules for every table: at Bits the rules
// hold (when the range is not empty), and one bit more breaks hiding.
func TestPlanBitsRules(t *testing.T) {
	for _, rows := range []uint64{1, 2, 3, 10, 99, 100, 1000, 4096, 65537, 1 << 40} {
		for _, d := range []uint64{1, 2, 4, 5, 8, 9, 17, 100, 1000, rows / 3, rows / 2, rows - 1, rows} {
			if d == 0 || d > rows {
				continue
			}
			p, err := PlanBits(rows, d)
			if err != nil {
				t.Fatalf("PlanBits(%d, %d): %v", rows, d, err)
			}
			sqrtR := math.Sqrt(float64(rows))
			fp := func(l int) float64 { return float64(rows) * float64(d-1) / float64(d) / math.Exp2(float64(l)) }
			co := func(l int) float64 { return float64(d-1) / math.Exp2(float64(l)) }
			if p.MaxBits > 0 && (co(p.MaxBits) < 2 || co(p.MaxBits+1) >= 2) {
				t.Errorf("PlanBits(%d, %d): MaxBits %d, but coincidences %v there and %v one bit longer", rows, d, p.MaxBits, co(p.MaxBits), co(p.MaxBits+1))
			}
			if p.MaxBits == 0 && co(1) >= 2 {
				t.Errorf("PlanBits(%d, %d): MaxBits 0, but 1 bit gives %v coincidences", rows, d, co(1))
			}
			if fp(p.MinBits) > sqrtR || (p.MinBits > 1 && fp(p.MinBits-1) <= sqrtR) {
				t.Errorf("PlanBits(%d, %d): MinBits %d, but false positives %v there and %v one bit shorter (√R = %v)", rows, d, p.MinBits, fp(p.MinBits), fp(p.MinBits-1), sqrtR)
			}
			if want := map[bool]int{true: p.MaxBits, false: p.MinBits}[p.MaxBits > 0]; p.Bits != want {
				t.Errorf("PlanBits(%d, %d): Bits %d, want %d (range %d to %d)", rows, d, p.Bits, want, p.MinBits, p.MaxBits)
			}
			if !near(p.FalsePositives, fp(p.Bits)) || !near(p.Coincidences, co(p.Bits)) {
				t.Errorf("PlanBits(%d, %d): at %d bits %v false positives, %v coincidences; want %v, %v", rows, d, p.Bits, p.FalsePositives, p.Coincidences, fp(p.Bits), co(p.Bits))
			}
		}
	}
}

func TestPlanBitsErrors(t *testing.T) {
	for i, tc := range []struct {
		rows, distinct uint64
		msg            string
	}{
		{0, 0, "envelope: blind index plan: rows must be at least 1"},
		{0, 5, "envelope: blind index plan: rows must be at least 1"},
		{10, 0, "envelope: blind index plan: distinct values must be at least 1"},
		{10, 11, "envelope: blind index plan: 11 distinct values in 10 rows: a table holds at most as many distinct values as rows"},
	} {
		p, err := PlanBits(tc.rows, tc.distinct)
		if err == nil || err.Error() != tc.msg {
			t.Errorf("#%d: PlanBits(%d, %d) = %+v, %v; want error %q", i, tc.rows, tc.distinct, p, err, tc.msg)
		}
		if p != (Plan{}) {
			t.Errorf("#%d: PlanBits(%d, %d) returned %+v with its error", i, tc.rows, tc.distinct, p)
		}
	}
}

func near(a, b float64) bool {
	return a == b || math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b))
}
