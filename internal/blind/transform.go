package blind

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// The steps a [Transform] may hold, by name.
const (
	stepLower  = "lower"  // strings.ToLower: each code point's simple lowercase mapping
	stepTrim   = "trim"   // strings.TrimSpace: leading and trailing Unicode White_Space
	stepNFC    = "nfc"    // norm.NFC: Unicode Normalization Form C
	stepDigits = "digits" // keep only the ASCII digits '0' to '9'
)

type step uint8

const (
	lower step = iota + 1
	trim
	nfc
	digits
)

// names are the steps' names, indexed by step.
var names = [...]string{lower: stepLower, trim: stepTrim, nfc: stepNFC, digits: stepDigits}

// maxSteps is the number of distinct steps, so the most a Transform holds.
const maxSteps = len(names) - 1

// Transform is the list of steps applied to a plaintext, in order, before
// it is hashed. The zero Transform has no steps and returns its input
// unchanged. Transforms are comparable: two are == when they hold the
// same steps in the same order.
type Transform struct {
	steps [maxSteps]step
	n     uint8
}

// ErrUnknownStep and ErrRepeatedStep are what a [SpecError] unwraps to.
var (
	ErrUnknownStep  = errors.New("unknown step")
	ErrRepeatedStep = errors.New("repeated step")
)

// SpecError is returned by [ParseTransform] for a spec it cannot parse. It
// names the step at fault; a spec names steps, never data, so the message
// carries no plaintext.
type SpecError struct {
	Spec string // the spec as given
	Step string // the step at fault, as given ("" for an empty element)
	Err  error  // ErrUnknownStep or ErrRepeatedStep
}

func (e *SpecError) Error() string {
	if errors.Is(e.Err, ErrRepeatedStep) {
		return fmt.Sprintf("envelope: blind index transform %q: step %q is repeated", e.Spec, e.Step)
	}
	return fmt.Sprintf("envelope: blind index transform %q: unknown step %q (want %s, %s, %s or %s)",
		e.Spec, e.Step, stepLower, stepTrim, stepNFC, stepDigits)
}

func (e *SpecError) Unwrap() error { return e.Err }

// ParseTransform parses a comma-separated list of step names: "lower",
// "trim", "nfc", "digits". Spaces around a name are ignored; "" is the
// zero Transform. An unknown name, an empty element or a step given twice
// is a *[SpecError].
func ParseTransform(spec string) (Transform, error) {
	var t Transform
	if spec == "" {
		return t, nil
	}
	var seen [len(names)]bool
	for name := range strings.SplitSeq(spec, ",") {
		name = strings.Trim(name, " ")
		s := lookup(name)
		if s == 0 {
			return Transform{}, &SpecError{Spec: spec, Step: name, Err: ErrUnknownStep}
		}
		if seen[s] {
			return Transform{}, &SpecError{Spec: spec, Step: name, Err: ErrRepeatedStep}
		}
		seen[s] = true
		t.steps[t.n] = s
		t.n++
	}
	return t, nil
}

func lookup(name string) step {
	for s, n := range names {
		if s > 0 && n == name {
			return step(s)
		}
	}
	return 0
}

// String returns the canonical spec of t: its step names, in order,
// separated by commas, with no spaces ("" for no steps). ParseTransform
// of it returns t.
func (t Transform) String() string {
	var b strings.Builder
	for i, s := range t.steps[:t.n] {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(names[s])
	}
	return b.String()
}

// Apply returns s with t's steps applied in order:
//
//   - lower: strings.ToLower, each code point's simple lowercase mapping
//     (Unicode's UnicodeData.txt, so "İ" becomes "i" and a final "Σ"
//     becomes "σ", not "ς").
//   - trim: strings.TrimSpace, which removes leading and trailing Unicode
//     White_Space.
//   - nfc: Unicode Normalization Form C.
//   - digits: only the ASCII digits '0' to '9' are kept.
//
// Apply never fails. Input that is not valid UTF-8 is hashed as the steps
// leave it: lower replaces each invalid byte by U+FFFD (so "\xff" and
// "\xfe" index alike); trim stops at an invalid byte as at any non-space;
// nfc leaves invalid bytes as they are; digits drops them.
func (t Transform) Apply(s string) string {
	for _, st := range t.steps[:t.n] {
		switch st {
		case lower:
			s = strings.ToLower(s)
		case trim:
			s = strings.TrimSpace(s)
		case nfc:
			s = norm.NFC.String(s)
		case digits:
			s = keepDigits(s)
		}
	}
	return s
}

// keepDigits returns the ASCII digits of s, in order. It returns s itself
// when s is all digits, and allocates otherwise.
func keepDigits(s string) string {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	b := make([]byte, i, len(s)-1)
	copy(b, s[:i])
	for ; i < len(s); i++ {
		if isDigit(s[i]) {
			b = append(b, s[i])
		}
	}
	return string(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
