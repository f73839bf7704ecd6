package blind

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/gorm-envelope/envelope/internal/testpy"

	"golang.org/x/text/unicode/norm"
)

// pySpec computes blind index values from docs/format.md alone, with
// Python's cryptography HKDF, hmac, hashlib and unicodedata. It reads
// {"cases": [{root, name, transform, bits, version, plain}]} and prints
// {"values": [stored], "assigned": [[lo, hi]], "lower": {cp: text},
// "nfc": {cp: text}, "space": [cp], "unicode": version}: the values, then for every code
// point assigned in Python's Unicode (surrogates excepted), what lower and
// nfc make of it where that differs from the code point itself, and which
// code points trim removes.
const pySpec = `
import hashlib, hmac, json, sys, unicodedata
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Unicode White_Space, as strings.TrimSpace has it (str.strip() also
# strips U+001C to U+001F).
WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"

def lower(s):
    # Each code point's simple lowercase mapping. str.lower() of one code
    # point is its full mapping, which differs only for U+0130 ("i\u0307").
    return "".join("i" if c == "\u0130" else c.lower() for c in s)

STEPS = {
    "lower": lower,
    "trim": lambda s: s.strip(WHITE_SPACE),
    "nfc": lambda s: unicodedata.normalize("NFC", s),
    "digits": lambda s: "".join(c for c in s if "0" <= c <= "9"),
}

def value(c):
    s = c["plain"]
    for step in (c["transform"].split(",") if c["transform"] else []):
        s = STEPS[step.strip(" ")](s)
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
             info=b"gorm-envelope blind index v1\x00" + c["name"].encode()).derive(bytes.fromhex(c["root"]))
    mac = hmac.new(k, s.encode(), hashlib.sha256).digest()
    n = (c["bits"] + 7) // 8
    kept = bytearray(mac[:n])
    kept[-1] &= (0xFF << (8 * n - c["bits"])) & 0xFF
    return "%d:%s" % (c["version"], kept.hex())

d = json.load(open(sys.argv[1], encoding="utf-8"))
out = {"values": [value(c) for c in d["cases"]], "assigned": [], "lower": {}, "nfc": {}, "space": [ord(c) for c in WHITE_SPACE], "unicode": unicodedata.unidata_version}
for cp in range(0x110000):
    if unicodedata.category(chr(cp)) in ("Cn", "Cs"):
        continue
    if out["assigned"] and out["assigned"][-1][1] == cp - 1:
        out["assigned"][-1][1] = cp
    else:
        out["assigned"].append([cp, cp])
    c = chr(cp)
    if lower(c) != c:
        out["lower"][cp] = lower(c)
    if STEPS["nfc"](c) != c:
        out["nfc"][cp] = STEPS["nfc"](c)
json.dump(out, sys.stdout)
`

type pyCase struct {
	Root      string `json:"root"`
	Name      string `json:"name"`
	Transform string `json:"transform"`
	Bits      int    `json:"bits"`
	Version   int    `json:"version"`
	Plain     string `json:"plain"`
}

// pyCases is the table the Python and Go implementations must agree on.
func pyCases(t *testing.T) []pyCase {
	roots := []string{
		strings.Repeat("00", 32),
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		hex.EncodeToString(randRoot(t)),
	}
	names := []string{"email", "e", "índice", "name with spaces", "a\x00b"}
	transforms := []string{"", "lower", "trim", "nfc", "digits", "trim,lower", "nfc,trim,lower", "lower,nfc", "digits,trim", " trim , lower "}
	plains := []string{
		"", "a", "Ǆ", "ǅ", "e\u0301", "E\u0301COLE", " MiXeD@Example.COM ", "İstanbul", "I\u0307", "ΟΔΟΣ",
		"\u00a0 x \u3000", "\u212a", "\u212b", "+1 (555) 010-9999", "٣٤5", "日本語", "👍🏽", "\x1cx\x1f",
		strings.Repeat("Ab1 ", 500),
	}
	bits := []int{1, 7, 8, 12, 32, 256, 9, 16, 100, 255}
	versions := []int{1, 2, 2147483647}
	var cs []pyCase
	i := 0
	for _, p := range plains {
		for _, tr := range transforms {
			cs = append(cs, pyCase{roots[i%len(roots)], names[i%len(names)], tr, bits[i%len(bits)], versions[i%len(versions)], p})
			i++
		}
	}
	// Every length, for one value.
	for b := MinBits; b <= MaxBits; b++ {
		cs = append(cs, pyCase{roots[2], "email", "trim,lower", b, 1, " MiXeD@Example.COM "})
	}
	return cs
}

// TestPython computes index values from the spec in Python and checks that
// Go gives the same, and that Go's lower, trim and nfc treat every code
// point as the spec's Python does.
func TestPython(t *testing.T) {
	py := testpy.Python(t, "cryptography.hazmat.primitives.kdf.hkdf")

	cases := pyCases(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "spec.py")
	input := filepath.Join(dir, "cases.json")
	data, err := json.Marshal(map[string]any{"cases": cases})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(pySpec), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(input, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, script, input)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.Bytes())
	}
	var res struct {
		Values   []string          `json:"values"`
		Assigned [][2]rune         `json:"assigned"`
		Lower    map[string]string `json:"lower"`
		NFC      map[string]string `json:"nfc"`
		Space    []rune            `json:"space"`
		Unicode  string            `json:"unicode"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python3 output: %v", err)
	}

	t.Run("values", func(t *testing.T) {
		if len(res.Values) != len(cases) {
			t.Fatalf("python3 computed %d values, want %d", len(res.Values), len(cases))
		}
		for i, c := range cases {
			root, _ := hex.DecodeString(c.Root)
			got := mustKey(t, root, c.Name).Value(c.Version, c.Bits, mustTransform(t, c.Transform).Apply(c.Plain))
			if got != res.Values[i] {
				t.Errorf("#%d: %q of %q under %q, %d bits, version %d: Go %s, Python %s",
					i, c.Transform, c.Plain, c.Name, c.Bits, c.Version, got, res.Values[i])
			}
		}
	})

	t.Run("code points", func(t *testing.T) {
		low, trim, nfc := mustTransform(t, "lower"), mustTransform(t, "trim"), mustTransform(t, "nfc")
		space := map[rune]bool{}
		for _, r := range res.Space {
			space[r] = true
		}
		want := func(m map[string]string, r rune) string {
			if s, ok := m[strconv.Itoa(int(r))]; ok {
				return s
			}
			return string(r)
		}
		n, bad := 0, 0
		for _, rg := range res.Assigned {
			for r := rg[0]; r <= rg[1]; r++ {
				n++
				s := string(r)
				if !utf8.ValidString(s) {
					t.Fatalf("U+%04X is not a valid rune", r)
				}
				for _, c := range []struct {
					step      string
					got, want string
				}{
					{"lower", low.Apply(s), want(res.Lower, r)},
					{"nfc", nfc.Apply(s), want(res.NFC, r)},
					{"trim", trim.Apply(s), map[bool]string{true: "", false: s}[space[r]]},
				} {
					if c.got != c.want {
						if bad++; bad <= 20 {
							t.Errorf("%s of U+%04X: Go %+q, Python %+q", c.step, r, c.got, c.want)
						}
					}
				}
			}
		}
		if bad > 20 {
			t.Errorf("... %d mismatches in all", bad)
		}
		if n < 100000 || len(res.Lower) < 1000 || len(res.NFC) < 1000 {
			t.Fatalf("python3 listed %d code points, %d lower and %d nfc mappings: too few", n, len(res.Lower), len(res.NFC))
		}
		t.Logf("%d code points checked: Python's Unicode %s, Go's %s (norm %s)", n, res.Unicode, unicode.Version, norm.Version)
	})
}
