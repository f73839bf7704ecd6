package blind

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func mustTransform(t testing.TB, spec string) Transform {
	t.Helper()
	tr, err := ParseTransform(spec)
	if err != nil {
		t.Fatalf("ParseTransform(%q): %v", spec, err)
	}
	return tr
}

func TestParseTransform(t *testing.T) {
	for i, tc := range []struct {
		spec, canonical string
	}{
		{"", ""},
		{"lower", "lower"},
		{"trim,lower", "trim,lower"},
		{"lower,trim", "lower,trim"},
		{" trim , lower ", "trim,lower"},
		{"nfc,trim,lower,digits", "nfc,trim,lower,digits"},
		{"digits", "digits"},
	} {
		tr, err := ParseTransform(tc.spec)
		if err != nil {
			t.Errorf("#%d: ParseTransform(%q): %v", i, tc.spec, err)
			continue
		}
		if got := tr.String(); got != tc.canonical {
			t.Errorf("#%d: ParseTransform(%q).String() = %q, want %q", i, tc.spec, got, tc.canonical)
		}
		again := mustTransform(t, tr.String())
		if again != tr {
			t.Errorf("#%d: ParseTransform(%q) does not round-trip through %q", i, tc.spec, tr.String())
		}
	}
	if mustTransform(t, "trim,lower") == mustTransform(t, "lower,trim") {
		t.Error("transforms of the same steps in another order compare equal")
	}
	if (Transform{}) != mustTransform(t, "") {
		t.Error(`ParseTransform("") is not the zero Transform`)
	}
}

func TestParseTransformErrors(t *testing.T) {
	for i, tc := range []struct {
		spec, step string
		err        error
		msg        string
	}{
		{"upper", "upper", ErrUnknownStep, `envelope: blind index transform "upper": unknown step "upper" (want lower, trim, nfc or digits)`},
		{"lower,Trim", "Trim", ErrUnknownStep, `unknown step "Trim"`},
		{"lower,,trim", "", ErrUnknownStep, `unknown step ""`},
		{"lower,", "", ErrUnknownStep, `unknown step ""`},
		{",", "", ErrUnknownStep, `unknown step ""`},
		{" ", "", ErrUnknownStep, `unknown step ""`},
		{"lower,trim,lower", "lower", ErrRepeatedStep, `envelope: blind index transform "lower,trim,lower": step "lower" is repeated`},
		{"digits, digits", "digits", ErrRepeatedStep, `step "digits" is repeated`},
		{"lower\ntrim", "lower\ntrim", ErrUnknownStep, `unknown step "lower\ntrim"`},
	} {
		tr, err := ParseTransform(tc.spec)
		var se *SpecError
		if !errors.As(err, &se) {
			t.Errorf("#%d: ParseTransform(%q) = %v, %v; want a *SpecError", i, tc.spec, tr, err)
			continue
		}
		if tr != (Transform{}) {
			t.Errorf("#%d: ParseTransform(%q) returned %q with its error", i, tc.spec, tr)
		}
		if se.Step != tc.step || se.Spec != tc.spec || !errors.Is(err, tc.err) {
			t.Errorf("#%d: ParseTransform(%q): Step %q, Spec %q, Err %v; want %q, %q, %v", i, tc.spec, se.Step, se.Spec, se.Err, tc.step, tc.spec, tc.err)
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.msg) || strings.Contains(msg, "\n") {
			t.Errorf("#%d: ParseTransform(%q): message %q, want one line containing %q", i, tc.spec, msg, tc.msg)
		}
	}
}

func TestApply(t *testing.T) {
	for i, tc := range []struct {
		spec, in, want string
	}{
		{"", " MiXeD ", " MiXeD "},
		{"lower", " MiXeD@Example.COM ", " mixed@example.com "},
		{"lower", "Ǆ", "ǆ"},       // U+01C4 to U+01C6
		{"lower", "ǅ", "ǆ"},       // the titlecase U+01C5 too
		{"lower", "İ", "i"},       // simple mapping: one code point, no U+0307
		{"lower", "ΟΔΟΣ", "οδοσ"}, // no final-sigma rule
		{"lower", "ß", "ß"},
		{"lower", "\u212a", "k"}, // KELVIN SIGN
		{"trim", " \t\n\v\f\r x y \u0085\u00a0\u2000\u3000", "x y"},
		{"trim", "\u200bx\u200b", "\u200bx\u200b"}, // ZERO WIDTH SPACE is not White_Space
		{"trim", "\x1cx\x1f", "\x1cx\x1f"},         // nor are the information separators
		{"nfc", "e\u0301", "\u00e9"},
		{"nfc", "\u00e9", "\u00e9"},
		{"nfc", "\u212b", "\u00c5"}, // ANGSTROM SIGN
		{"nfc", "\u1e9b\u0323", "\u1e9b\u0323"},
		{"digits", "+1 (555) 010-9999", "15550109999"},
		{"digits", "٣٤", ""}, // Arabic-Indic digits are not ASCII
		{"digits", "2024", "2024"},
		{"digits", "none", ""},
		{"trim,lower", " MiXeD@Example.COM ", "mixed@example.com"},
		{"nfc,lower", "E\u0301", "\u00e9"},
		{"lower,nfc", "E\u0301", "\u00e9"},
	} {
		if got := mustTransform(t, tc.spec).Apply(tc.in); got != tc.want {
			t.Errorf("#%d: %q.Apply(%q) = %q, want %q", i, tc.spec, tc.in, got, tc.want)
		}
	}
}

// The steps run in the order given. Only lower and nfc fail to commute:
// NFC composes "I\u0307" into U+0130, which lowers to "i"; lowering first
// gives "i\u0307", which has no composed form.
func TestApplyOrder(t *testing.T) {
	for i, tc := range []struct {
		in           string
		a, b         string
		wantA, wantB string
	}{
		{"I\u0307", "nfc,lower", "lower,nfc", "i", "i\u0307"},
		{" A\u030a ", "trim,lower,nfc", "nfc,trim,lower", "\u00e5", "\u00e5"},
		{" 0A1 ", "trim,digits", "digits,trim", "01", "01"},
	} {
		ga := mustTransform(t, tc.a).Apply(tc.in)
		gb := mustTransform(t, tc.b).Apply(tc.in)
		if ga != tc.wantA || gb != tc.wantB {
			t.Errorf("#%d: %q of %q = %q, %q of it = %q; want %q, %q", i, tc.a, tc.in, ga, tc.b, gb, tc.wantA, tc.wantB)
		}
	}
}

// Invalid UTF-8 never panics; each step does what Apply documents.
func TestApplyInvalidUTF8(t *testing.T) {
	for i, tc := range []struct {
		spec, in, want string
	}{
		{"lower", "A\xffB", "a\ufffdb"},
		{"lower", "\xe2\x82", "\ufffd\ufffd"}, // a truncated sequence: each byte
		{"trim", " \xff ", "\xff"},
		{"trim", "\xff x \xff", "\xff x \xff"},
		{"nfc", "e\u0301\xff", "\u00e9\xff"},
		{"nfc", "\xcc\x81", "\u0301"}, // a lone combining mark is valid, and kept
		{"digits", "1\xff2\xe2\x82\xac3", "123"},
		{"trim,lower,nfc,digits", "\xff", ""},
	} {
		got := mustTransform(t, tc.spec).Apply(tc.in)
		if got != tc.want {
			t.Errorf("#%d: %q.Apply(%q) = %q, want %q", i, tc.spec, tc.in, got, tc.want)
		}
	}
	low := mustTransform(t, "lower")
	if low.Apply("\xff") != low.Apply("\xfe") {
		t.Error(`lower: "\xff" and "\xfe" differ, but both should become U+FFFD`)
	}
	if !utf8.ValidString(low.Apply("a\xffb\xc0")) {
		t.Error("lower left invalid UTF-8 in its output")
	}
}

func TestKeepDigitsAllocs(t *testing.T) {
	d := mustTransform(t, "digits")
	if n := testing.AllocsPerRun(100, func() { _ = d.Apply("0123456789") }); n != 0 {
		t.Errorf("digits of an all-digit string allocated %v times, want 0", n)
	}
}

func FuzzApply(f *testing.F) {
	// Seeds: ASCII, combining marks, special lowercase mappings, invalid
	// UTF-8, White_Space at the edges.
	for _, s := range []string{"", " MiXeD@Example.COM ", "e\u0301", "Ǆ", "İ", "\xff\xfe", "\u00a0٣4\u3000", "\xe2\x82"} {
		f.Add(s)
	}
	all := []Transform{
		mustTransform(f, "lower"), mustTransform(f, "trim"), mustTransform(f, "nfc"), mustTransform(f, "digits"),
		mustTransform(f, "trim,lower,nfc"), mustTransform(f, "nfc,digits"),
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, tr := range all {
			out := tr.Apply(s)
			// Each of these transforms is idempotent on its own output.
			if again := tr.Apply(out); again != out {
				t.Errorf("%q: Apply(%q) = %q, but Apply of that = %q", tr, s, out, again)
			}
		}
		if d := all[3].Apply(s); strings.Trim(d, "0123456789") != "" {
			t.Errorf("digits of %q = %q", s, d)
		}
	})
}
