package cli

import (
	"regexp"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope/dek"
)

// index-plan prints the planner's worked numbers and exits 0, whatever
// keys or database the environment names; a bad command line exits 2.
func TestIndexPlan(t *testing.T) {
	vars := map[string]string{dek.EnvKey: "short", "ENVELOPE_DRIVER": "nope", "ENVELOPE_DSN": "missing.db"}
	for i, tc := range []struct {
		rows, distinct string
		want           []string // lines of stdout, as regexps
		note           bool
	}{
		{"10000", "10000", []string{`recommended +12 bits`, `range +7 to 12 bits`, `false positives +2\.44 rows`, `coincidences +2\.44 other values`}, false},
		{"1000000", "1000000", []string{`recommended +18 bits`, `range +10 to 18 bits`, `false positives +3\.81 rows`}, false},
		{"100", "2", []string{`recommended +3 bits`, `false positives +6\.25 rows`, `coincidences +0\.12 other`, `note: 2 distinct values are too few to hide`}, true},
		{"5", "5", []string{`recommended +1 bit$`, `range +1 to 1 bits`, `false positives +2\.00 rows .* at 1 bit \(want at most √rows = 2\.24\)`, `coincidences +2\.00 other`}, false},
		{"1", "1", []string{`recommended +1 bit$`, `note: 1 distinct value is too few`}, true},
		{"18446744073709551615", "18446744073709551615", []string{`recommended +62 bits`, `range +32 to 62 bits`}, false},
	} {
		code, stdout, stderr := runCLI(t, vars, false, "index-plan", "--rows", tc.rows, "--distinct", tc.distinct)
		if code != exitOK || stderr != "" {
			t.Errorf("#%d: exit %d, stderr %q", i, code, stderr)
			continue
		}
		for _, w := range tc.want {
			if !regexp.MustCompile(`(?m)^` + w).MatchString(stdout) {
				t.Errorf("#%d: stdout has no line matching %q:\n%s", i, w, stdout)
			}
		}
		if strings.Contains(stdout, "\nnote: ") != tc.note {
			t.Errorf("#%d: note present = %v, want %v:\n%s", i, !tc.note, tc.note, stdout)
		}
	}
	for _, args := range [][]string{
		{"index-plan"},
		{"index-plan", "--rows", "0", "--distinct", "0"},
		{"index-plan", "--rows", "3", "--distinct", "4"},
		{"index-plan", "--rows", "x", "--distinct", "1"},
		{"index-plan", "--rows", "18446744073709551616", "--distinct", "1"},
		{"index-plan", "--rows", "3", "--distinct", "1", "--dsn", "app.db"},
	} {
		code, stdout, stderr := runCLI(t, vars, false, args...)
		if code != exitUsage || stdout != "" || !strings.HasPrefix(stderr, "envelope: index-plan: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line", args, code, stdout, stderr)
		}
	}
}
