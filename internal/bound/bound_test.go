package bound

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestRoundTrip seals every plaintext length from 0 to 4096 in both forms,
// checks each value's shape and opens it.
func TestRoundTrip(t *testing.T) {
	c := New(randDEK(t))
	for n := 0; n <= 4096; n++ {
		pt := randBytes(t, n)
		ctx := testCtx
		if n%2 == 0 {
			ctx.Row = ""
		}
		raw := mustSeal(t, c, pt, &ctx)
		if len(raw) != n+Overhead || raw[0] != Version || !IsBound(raw) {
			t.Fatalf("size %d: raw value of %d bytes, version %#x, IsBound %v", n, len(raw), raw[0], IsBound(raw))
		}
		got := mustOpen(t, c, raw, &ctx)
		if !bytes.Equal(got, pt) || got == nil {
			t.Fatalf("size %d: Open gives %x, want %x", n, got, pt)
		}

		text := mustSealText(t, c, pt, &ctx)
		if len(text) != TextLen(n+Overhead) || !IsBound(text) {
			t.Fatalf("size %d: text of %d characters, want %d; IsBound %v", n, len(text), TextLen(n+Overhead), IsBound(text))
		}
		got, err := c.OpenText(nil, text, &ctx)
		if err != nil || !bytes.Equal(got, pt) || got == nil {
			t.Fatalf("size %d: OpenText = %x, %v; want %x", n, got, err, pt)
		}
		// The text of a raw value is the same both ways, and opens alike.
		parsed, err := ParseText(AppendText(nil, raw))
		if err != nil || !bytes.Equal(parsed, raw) {
			t.Fatalf("size %d: ParseText(AppendText(raw)) = %x, %v", n, parsed, err)
		}
		parsed, err = ParseText(text)
		if err != nil || len(parsed) != n+Overhead {
			t.Fatalf("size %d: ParseText(SealText) = %d bytes, %v", n, len(parsed), err)
		}
		if got := mustOpen(t, c, parsed, &ctx); !bytes.Equal(got, pt) {
			t.Fatalf("size %d: Open(ParseText(text)) = %x", n, got)
		}
	}
}

// TestAppend: every method appends to dst and keeps what it held, also
// when dst must grow, and results have no spare capacity over dst's.
func TestAppend(t *testing.T) {
	c := New(randDEK(t))
	pt := randBytes(t, 33)
	for _, dst := range [][]byte{nil, []byte("head"), make([]byte, 4, 4+TextLen(33+Overhead))} {
		head := string(dst)
		raw, err := c.Seal(dst, pt, &testCtx)
		if err != nil || !strings.HasPrefix(string(raw), head) {
			t.Fatalf("Seal onto %q: %q, %v", head, raw, err)
		}
		v := bytes.Clone(raw[len(head):]) // dst's capacity is reused below
		text, err := c.SealText(dst, pt, &testCtx)
		if err != nil || !strings.HasPrefix(string(text), head) || !IsBound(text[len(head):]) {
			t.Fatalf("SealText onto %q: %q, %v", head, text, err)
		}
		text = bytes.Clone(text[len(head):])
		out, err := c.Open(dst, v, &testCtx)
		if err != nil || string(out) != head+string(pt) {
			t.Fatalf("Open onto %q: %q, %v", head, out, err)
		}
		out, err = c.OpenText(dst, text, &testCtx)
		if err != nil || string(out) != head+string(pt) {
			t.Fatalf("OpenText onto %q: %q, %v", head, out, err)
		}
		if got := AppendText(dst, v); string(got) != head+string(AppendText(nil, v)) {
			t.Fatalf("AppendText onto %q: %q", head, got)
		}
	}
	out, err := c.Open(nil, mustSeal(t, c, pt, &testCtx), &testCtx)
	if err != nil || cap(out) != len(pt) {
		t.Fatalf("Open(nil, ...): cap %d, len %d, %v", cap(out), len(out), err)
	}
}

// TestAllocs: with room in dst nothing allocates; without, only the result.
func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	c := New(randDEK(t))
	pt := randBytes(t, 32)
	raw := mustSeal(t, c, pt, &testCtx)
	text := mustSealText(t, c, pt, &testCtx)
	buf := make([]byte, 0, 256)
	var err error
	for _, a := range []struct {
		name string
		want float64
		f    func()
	}{
		{"Open, buffer", 0, func() { _, err = c.Open(buf, raw, &testCtx) }},
		{"OpenText, buffer", 0, func() { _, err = c.OpenText(buf, text, &testCtx) }},
		{"Seal, buffer", 0, func() { _, err = c.Seal(buf, pt, &testCtx) }},
		{"SealText, buffer", 0, func() { _, err = c.SealText(buf, pt, &testCtx) }},
		{"Open, nil", 1, func() { _, err = c.Open(nil, raw, &testCtx) }},
		{"OpenText, nil", 1, func() { _, err = c.OpenText(nil, text, &testCtx) }},
		{"Seal, nil", 1, func() { _, err = c.Seal(nil, pt, &testCtx) }},
		{"SealText, nil", 1, func() { _, err = c.SealText(nil, pt, &testCtx) }},
		{"IsBound", 0, func() { IsBound(text) }},
	} {
		if got := testing.AllocsPerRun(100, a.f); got != a.want || err != nil {
			t.Errorf("%s: %v allocations, %v; want %v", a.name, got, err, a.want)
		}
	}
}

// TestEmptyPlaintext: an empty plaintext makes the shortest value, which
// opens to a non-nil empty slice.
func TestEmptyPlaintext(t *testing.T) {
	c := New(randDEK(t))
	for _, pt := range [][]byte{nil, {}} {
		raw := mustSeal(t, c, pt, &testCtx)
		if len(raw) != Overhead {
			t.Errorf("empty plaintext: %d bytes, want Overhead = %d", len(raw), Overhead)
		}
		if got := mustOpen(t, c, raw, &testCtx); got == nil || len(got) != 0 {
			t.Errorf("empty plaintext opens to %#v, want non-nil empty slice", got)
		}
		text := mustSealText(t, c, pt, &testCtx)
		if len(text) != minText || minText != 39 {
			t.Errorf("empty plaintext: text of %d characters, minText %d; want 39", len(text), minText)
		}
		if got, err := c.OpenText(nil, text, &testCtx); err != nil || got == nil || len(got) != 0 {
			t.Errorf("empty plaintext text opens to %#v, %v", got, err)
		}
	}
}

// TestFreshNonce: sealing one plaintext in one context gives a new nonce
// every time.
func TestFreshNonce(t *testing.T) {
	c := New(randDEK(t))
	seen := map[string]bool{}
	for range 1000 {
		raw := mustSeal(t, c, []byte("same"), &testCtx)
		nonce := string(raw[1 : 1+NonceSize])
		if seen[nonce] {
			t.Fatal("two values share a nonce")
		}
		seen[nonce] = true
	}
}

// TestSealRefuses: Seal and SealText refuse a missing context and one
// without table, column or owner, return dst as it was, and name the
// missing field without quoting the plaintext.
func TestSealRefuses(t *testing.T) {
	c := New(randDEK(t))
	pt := []byte("s3cret-plaintext")
	for _, tc := range []struct {
		ctx  *Context
		want string
	}{
		{nil, "no context"},
		{&Context{Column: "c", Owner: "1"}, "no table"},
		{&Context{Table: "t", Owner: "1", Row: "1"}, "no column"},
		{&Context{Table: "t", Column: "c", Row: "1"}, "no owner"},
	} {
		for name, seal := range map[string]func([]byte, []byte, *Context) ([]byte, error){"Seal": c.Seal, "SealText": c.SealText} {
			out, err := seal([]byte("dst"), pt, tc.ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) || string(out) != "dst" {
				t.Fatalf("%s(%+v) = %q, %v; want dst and an error saying %q", name, tc.ctx, out, err, tc.want)
			}
			if strings.Contains(err.Error(), string(pt)) {
				t.Fatalf("%s: error %q quotes the plaintext", name, err)
			}
		}
	}
	raw := mustSeal(t, c, pt, &testCtx)
	wantInvalid(t, c, raw, nil, "nil context")
	wantInvalidText(t, c, AppendText(nil, raw), nil, "nil context, text")
}

// TestContextBinding opens values under contexts that differ from the
// sealing one in a single way: each fails, in both forms.
func TestContextBinding(t *testing.T) {
	c := New(randDEK(t))
	base := Context{Table: "users", Column: "email", Owner: "42", Row: "42"}
	noRow := base
	noRow.Row = ""
	for _, tc := range []struct {
		name       string
		seal, open Context
	}{
		{"table", base, Context{"profiles", "email", "42", "42"}},
		{"column", base, Context{"users", "phone", "42", "42"}},
		{"owner", base, Context{"users", "email", "43", "42"}},
		{"owner as text", base, Context{"users", "email", "042", "42"}},
		{"row", base, Context{"users", "email", "42", "43"}},
		{"row removed", base, noRow},
		{"row added", noRow, base},
		{"table/column boundary", Context{"ab", "c", "1", ""}, Context{"a", "bc", "1", ""}},
		{"column/owner boundary", Context{"t", "c1", "2", ""}, Context{"t", "c", "12", ""}},
		{"owner/row boundary", Context{"t", "c", "1", "2"}, Context{"t", "c", "12", ""}},
		{"fields swapped", Context{"a", "b", "c", "d"}, Context{"b", "a", "d", "c"}},
		{"case", base, Context{"Users", "email", "42", "42"}},
	} {
		pt := []byte("value for " + tc.name)
		raw := mustSeal(t, c, pt, &tc.seal)
		text := mustSealText(t, c, pt, &tc.seal)
		// Genuine in its own context, so the failures below are the
		// binding's.
		mustOpen(t, c, raw, &tc.seal)
		wantInvalid(t, c, raw, &tc.open, tc.name)
		wantInvalidText(t, c, text, &tc.open, tc.name+", text")
	}
	// Another owner's DEK, in the same context.
	raw := mustSeal(t, c, []byte("x"), &base)
	wantInvalid(t, New(randDEK(t)), raw, &base, "another DEK")
}

// trickyContexts are contexts built from fields that are empty, share
// prefixes, hold the bytes the encoding uses, or are long enough for
// two-byte lengths.
func trickyContexts() []Context {
	long := strings.Repeat("x", 127)
	fields := []string{"", "a", "ab", "b", "\x00", "\x01", "\x01a", "\x00\x01", "a\x00", long, long + "x", "\x80\x01", "\xff"}
	var cs []Context
	for _, tb := range fields {
		for _, co := range fields {
			for _, ow := range fields {
				for _, rw := range []string{"", "a", "\x00", "\x01a", long + "x"} {
					cs = append(cs, Context{tb, co, ow, rw})
				}
			}
		}
	}
	return cs
}

// TestAADInjective: distinct contexts never share associated data, and
// the associated data reads back as the context it came from.
func TestAADInjective(t *testing.T) {
	seen := map[string]Context{}
	for _, ctx := range trickyContexts() {
		aad := appendAAD(nil, &ctx)
		if prev, ok := seen[string(aad)]; ok {
			t.Fatalf("%+q and %+q have the same associated data %x", prev, ctx, aad)
		}
		seen[string(aad)] = ctx
		if got, ok := parseAAD(aad); !ok || got != ctx {
			t.Fatalf("associated data %x reads back as %+q, %v; want %+q", aad, got, ok, ctx)
		}
	}
	if len(seen) != 13*13*13*5 {
		t.Fatalf("%d contexts checked", len(seen))
	}
}

// parseAAD reads associated data back into its context: that it always
// can, with nothing left over, is what makes the encoding injective.
func parseAAD(aad []byte) (Context, bool) {
	if len(aad) == 0 || aad[0] != Version {
		return Context{}, false
	}
	aad = aad[1:]
	field := func() (string, bool) {
		n, k := binary.Uvarint(aad)
		if k <= 0 || uint64(len(aad)-k) < n {
			return "", false
		}
		s := string(aad[k : k+int(n)])
		aad = aad[k+int(n):]
		return s, true
	}
	var ctx Context
	var ok1, ok2, ok3 bool
	ctx.Table, ok1 = field()
	ctx.Column, ok2 = field()
	ctx.Owner, ok3 = field()
	if !ok1 || !ok2 || !ok3 || len(aad) == 0 {
		return Context{}, false
	}
	flag := aad[0]
	aad = aad[1:]
	switch flag {
	case 0:
	case 1:
		var ok bool
		if ctx.Row, ok = field(); !ok || ctx.Row == "" {
			return Context{}, false
		}
	default:
		return Context{}, false
	}
	return ctx, len(aad) == 0
}

// TestAADLayout pins the associated data's bytes, as docs/format.md has them.
func TestAADLayout(t *testing.T) {
	for _, tc := range []struct {
		ctx  Context
		want string
	}{
		{Context{"users", "email", "42", ""}, "81 05 7573657273 05 656d61696c 02 3432 00"},
		{Context{"users", "email", "42", "7"}, "81 05 7573657273 05 656d61696c 02 3432 01 01 37"},
		{Context{"", "", "", ""}, "81 00 00 00 00"},
		{Context{strings.Repeat("t", 200), "c", "1", ""}, "81 c801 " + strings.Repeat("74", 200) + " 01 63 01 31 00"},
	} {
		want, err := hex.DecodeString(strings.ReplaceAll(tc.want, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if got := appendAAD(nil, &tc.ctx); !bytes.Equal(got, want) {
			t.Errorf("%.40q: associated data\n got %x\nwant %x", tc.ctx, got, want)
		}
	}
}

// TestSingleByteChanges sets every byte of a raw value to each of its 255
// other values, and every character of its text to each other byte: all
// fail with ErrInvalid.
func TestSingleByteChanges(t *testing.T) {
	c := New(randDEK(t))
	for _, n := range []int{0, 1, 32, 47} {
		pt := randBytes(t, n)
		raw := mustSeal(t, c, pt, &testCtx)
		for i := range raw {
			for d := 1; d < 256; d++ {
				bad := bytes.Clone(raw)
				bad[i] += byte(d)
				wantInvalid(t, c, bad, &testCtx, fmt.Sprintf("size %d, byte %d + %d", n, i, d))
			}
		}
		text := AppendText(nil, raw)
		for i := range text {
			for d := 1; d < 256; d++ {
				bad := bytes.Clone(text)
				bad[i] += byte(d)
				what := fmt.Sprintf("size %d, character %d + %d", n, i, d)
				wantInvalidText(t, c, bad, &testCtx, what)
				if got, err := ParseText(bad); err == nil {
					// Another valid text: its raw value must differ, and fail.
					if bytes.Equal(got, raw) {
						t.Fatalf("%s: parses to the same raw value", what)
					}
					wantInvalid(t, c, got, &testCtx, what+", parsed")
				}
			}
		}
	}
}

// TestTruncations: every proper prefix of a raw value and of its text
// fails, and so do bytes appended to either.
func TestTruncations(t *testing.T) {
	c := New(randDEK(t))
	for _, n := range []int{0, 5, 32, 300} {
		raw := mustSeal(t, c, randBytes(t, n), &testCtx)
		text := AppendText(nil, raw)
		for k := range len(raw) {
			wantInvalid(t, c, raw[:k], &testCtx, fmt.Sprintf("size %d, raw cut to %d", n, k))
			wantInvalidText(t, c, AppendText(nil, raw[:k]), &testCtx, fmt.Sprintf("size %d, raw cut to %d, as text", n, k))
		}
		for k := range len(text) {
			wantInvalidText(t, c, text[:k], &testCtx, fmt.Sprintf("size %d, text cut to %d", n, k))
		}
		for _, extra := range [][]byte{{0}, {1, 2, 3}, bytes.Repeat([]byte{0x10}, 16)} {
			long := append(bytes.Clone(raw), extra...)
			wantInvalid(t, c, long, &testCtx, fmt.Sprintf("size %d, %d bytes appended", n, len(extra)))
			wantInvalidText(t, c, AppendText(nil, long), &testCtx, fmt.Sprintf("size %d, %d bytes appended, as text", n, len(extra)))
		}
		for _, extra := range []string{"A", "AA", "AAA", "AAAA"} {
			wantInvalidText(t, c, append(bytes.Clone(text), extra...), &testCtx, fmt.Sprintf("size %d, %q appended to text", n, extra))
		}
	}
}

// TestFailedOpenLeavesNoPlaintext: a value whose tag was changed leaves
// none of its plaintext in dst's spare capacity.
func TestFailedOpenLeavesNoPlaintext(t *testing.T) {
	c := New(randDEK(t))
	pt := randBytes(t, 64)
	raw := mustSeal(t, c, pt, &testCtx)
	raw[len(raw)-1] ^= 1
	for _, open := range []func([]byte) ([]byte, error){
		func(dst []byte) ([]byte, error) { return c.Open(dst, raw, &testCtx) },
		func(dst []byte) ([]byte, error) { return c.OpenText(dst, AppendText(nil, raw), &testCtx) },
	} {
		dst := make([]byte, 3, 256)
		if out, err := open(dst); err != ErrInvalid || len(out) != 3 {
			t.Fatalf("Open of a changed tag: %d bytes, %v", len(out), err)
		}
		if spare := dst[3:cap(dst)]; bytes.Contains(spare, pt[:8]) || bytes.Contains(spare, pt[56:]) {
			t.Fatal("a failed Open left plaintext in dst's spare capacity")
		}
	}
}

// TestGarbage: random bytes, their text, and Fernet-shaped text fail.
func TestGarbage(t *testing.T) {
	c := New(randDEK(t))
	for n := range 200 {
		junk := randBytes(t, n)
		wantInvalid(t, c, junk, &testCtx, fmt.Sprintf("%d random bytes", n))
		wantInvalidText(t, c, junk, &testCtx, fmt.Sprintf("%d random bytes as text", n))
		wantInvalidText(t, c, AppendText(nil, junk), &testCtx, fmt.Sprintf("%d random bytes, encoded", n))
		if n >= Overhead {
			junk[0] = Version
			wantInvalid(t, c, junk, &testCtx, fmt.Sprintf("%d random bytes after the version", n))
			wantInvalidText(t, c, AppendText(nil, junk), &testCtx, fmt.Sprintf("%d random bytes after the version, encoded", n))
		}
	}
}

// TestConcurrentUse shares one Cipher between goroutines; run with -race.
func TestConcurrentUse(t *testing.T) {
	c := New(randDEK(t))
	shared := mustSealText(t, c, []byte("shared"), &testCtx)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			ctx := Context{"t", "c", fmt.Sprint(g), ""}
			buf := make([]byte, 0, 64)
			for i := range 300 {
				pt := []byte(fmt.Sprintf("goroutine %d value %d %s", g, i, strings.Repeat("x", i%50)))
				text, err := c.SealText(nil, pt, &ctx)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := c.OpenText(buf[:0], text, &ctx)
				if err != nil || !bytes.Equal(got, pt) {
					t.Errorf("goroutine %d: round trip %d: %q, %v", g, i, got, err)
					return
				}
				if got, err := c.OpenText(buf[:0], shared, &testCtx); err != nil || string(got) != "shared" {
					t.Errorf("goroutine %d: shared value: %q, %v", g, got, err)
					return
				}
				if _, err := c.OpenText(buf[:0], shared, &ctx); err != ErrInvalid {
					t.Errorf("goroutine %d: shared value in another context: %v", g, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
