package token

import (
	"crypto/fips140"
	"os"
	"strings"
	"testing"
)

// TestFIPS140Mode: when CI runs the suite with GODEBUG=fips140=on, Go's
// FIPS 140-3 mode is really on, so the codec's tests ran inside it.
func TestFIPS140Mode(t *testing.T) {
	if !strings.Contains(os.Getenv("GODEBUG"), "fips140=on") {
		t.Skip("GODEBUG has no fips140=on")
	}
	if !fips140.Enabled() {
		t.Fatal("GODEBUG=fips140=on, but crypto/fips140.Enabled() is false")
	}
	c := New(fuzzKey)
	tok, err := c.Encrypt([]byte("in FIPS mode"))
	if err != nil {
		t.Fatal(err)
	}
	if got := mustDecrypt(t, c, tok); string(got) != "in FIPS mode" {
		t.Fatalf("round trip gave %q", got)
	}
}
