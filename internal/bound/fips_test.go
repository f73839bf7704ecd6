package bound

import (
	"crypto/fips140"
	"os"
	"strings"
	"testing"
)

// TestFIPS140Mode: when CI runs the suite with GODEBUG=fips140=on (or
// only), Go's FIPS 140-3 mode is really on, so the codec's tests ran
// inside it; under fips140=only, which refuses services the module does
// not approve, the codec still seals and opens.
func TestFIPS140Mode(t *testing.T) {
	godebug := os.Getenv("GODEBUG")
	if !strings.Contains(godebug, "fips140=on") && !strings.Contains(godebug, "fips140=only") {
		t.Skip("GODEBUG has no fips140=on or fips140=only")
	}
	if !fips140.Enabled() {
		t.Fatalf("GODEBUG=%s, but crypto/fips140.Enabled() is false", godebug)
	}
	if strings.Contains(godebug, "fips140=only") != fips140.Enforced() {
		t.Fatalf("GODEBUG=%s, but crypto/fips140.Enforced() is %v", godebug, fips140.Enforced())
	}
	c := New(fuzzDEK)
	text := mustSealText(t, c, []byte("in FIPS mode"), &testCtx)
	if got, err := c.OpenText(nil, text, &testCtx); err != nil || string(got) != "in FIPS mode" {
		t.Fatalf("round trip gave %q, %v", got, err)
	}
}
