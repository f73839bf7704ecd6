package bound

import (
	"bytes"
	"encoding/base64"
	"testing"
)

// fuzzDEK is fixed so that corpus entries mean the same on every run.
var fuzzDEK = [DEKSize]byte{
	0x5a, 0x17, 0x8c, 0x21, 0x9e, 0x4f, 0xd0, 0x33, 0x6b, 0x02, 0xe7, 0x58, 0xa4, 0x1d, 0x90, 0xc6,
	0x3e, 0x71, 0x0b, 0xf9, 0x26, 0x8d, 0x44, 0xb2, 0x6f, 0x13, 0xca, 0x85, 0x37, 0xe0, 0x59, 0x9b,
}

// fuzzSeeds are raw values under fuzzDEK in testCtx: genuine ones, each
// with one byte changed, and cut short.
func fuzzSeeds(f *testing.F) [][]byte {
	c := New(fuzzDEK)
	var seeds [][]byte
	for _, n := range []int{0, 1, 16, 42} {
		raw := mustSeal(f, c, bytes.Repeat([]byte{byte(n)}, n), &testCtx)
		bad := bytes.Clone(raw)
		bad[len(bad)/2] ^= 0x40
		seeds = append(seeds, raw, bad, raw[:len(raw)-1])
	}
	return seeds
}

// FuzzOpen: Open never panics; it returns dst unchanged and ErrInvalid, or
// a plaintext of len(value)-Overhead bytes that opens again the same from
// the value's text.
func FuzzOpen(f *testing.F) {
	c := New(fuzzDEK)
	for _, raw := range fuzzSeeds(f) {
		f.Add(raw, testCtx.Table, testCtx.Column, testCtx.Owner, testCtx.Row)
	}
	for _, v := range loadVectors(f) {
		raw, _ := base64.RawURLEncoding.DecodeString(v.Text)
		ctx := v.context()
		f.Add(raw, ctx.Table, ctx.Column, ctx.Owner, ctx.Row)
	}
	f.Fuzz(func(t *testing.T, value []byte, table, column, owner, row string) {
		ctx := &Context{table, column, owner, row}
		out, err := c.Open([]byte("dst"), value, ctx)
		if err != nil {
			if err != ErrInvalid || string(out) != "dst" {
				t.Fatalf("Open = %q, %v; want dst, ErrInvalid", out, err)
			}
			return
		}
		pt := out[3:]
		if string(out[:3]) != "dst" || len(pt) != len(value)-Overhead || !IsBound(value) {
			t.Fatalf("Open accepted %x as %q", value, out)
		}
		if got, err := c.OpenText(nil, AppendText(nil, value), ctx); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("OpenText of its text = %q, %v; want %q", got, err, pt)
		}
	})
}

// FuzzOpenText: OpenText never panics, and agrees with ParseText then Open.
func FuzzOpenText(f *testing.F) {
	c := New(fuzzDEK)
	for _, raw := range fuzzSeeds(f) {
		text := AppendText(nil, raw)
		f.Add(text, testCtx.Table, testCtx.Column, testCtx.Owner, testCtx.Row)
		f.Add(append(bytes.Clone(text), '='), testCtx.Table, testCtx.Column, testCtx.Owner, testCtx.Row)
	}
	f.Fuzz(func(t *testing.T, text []byte, table, column, owner, row string) {
		ctx := &Context{table, column, owner, row}
		got, err := c.OpenText(nil, text, ctx)
		var want []byte
		raw, perr := ParseText(text)
		if perr == nil {
			want, perr = c.Open(nil, raw, ctx)
		}
		if err != perr || !bytes.Equal(got, want) || (err == nil) != (got != nil) {
			t.Fatalf("OpenText = %q, %v; ParseText and Open give %q, %v", got, err, want, perr)
		}
		if err != nil && err != ErrInvalid {
			t.Fatalf("OpenText error %v, want ErrInvalid", err)
		}
	})
}

// FuzzParseText: ParseText never panics; what it accepts is the canonical
// unpadded URL-safe base64 of a value of at least Overhead bytes starting
// with Version, and AppendText gives the same text back.
func FuzzParseText(f *testing.F) {
	for _, raw := range fuzzSeeds(f) {
		text := AppendText(nil, raw)
		f.Add(text)
		f.Add(append(bytes.Clone(text), "=="...))
		f.Add(append(text[:10:10], append([]byte("\n"), text[10:]...)...))
		f.Add([]byte(base64.StdEncoding.EncodeToString(raw)))
	}
	for _, v := range loadVectors(f) {
		f.Add([]byte(v.Text))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		raw, err := ParseText(text)
		if err != nil {
			if err != ErrInvalid || raw != nil {
				t.Fatalf("ParseText = %x, %v; want nil, ErrInvalid", raw, err)
			}
			// Rejected: not strict unpadded base64, or not a value's shape.
			if dec, err := base64.RawURLEncoding.Strict().DecodeString(string(text)); err == nil &&
				!bytes.ContainsAny(text, "\r\n") && len(dec) >= Overhead && dec[0] == Version {
				t.Fatalf("ParseText refused %q, the text of %x", text, dec)
			}
			return
		}
		if len(raw) < Overhead || raw[0] != Version || !IsBound(text) || !IsBound(raw) {
			t.Fatalf("ParseText accepted %q as %x", text, raw)
		}
		if again := AppendText(nil, raw); !bytes.Equal(again, text) {
			t.Fatalf("ParseText accepted %q, whose bytes' text is %q", text, again)
		}
	})
}

// FuzzAAD: the associated data always reads back as its context, so no
// two contexts share it.
func FuzzAAD(f *testing.F) {
	for _, ctx := range []Context{testCtx, {}, {"ab", "c", "", ""}, {"a", "bc", "", "\x00"}, {"\x01", "\x80\x01", "\xff", "x"}} {
		f.Add(ctx.Table, ctx.Column, ctx.Owner, ctx.Row)
	}
	f.Fuzz(func(t *testing.T, table, column, owner, row string) {
		ctx := Context{table, column, owner, row}
		aad := appendAAD(nil, &ctx)
		if got, ok := parseAAD(aad); !ok || got != ctx {
			t.Fatalf("associated data %x of %+q reads back as %+q, %v", aad, ctx, got, ok)
		}
	})
}

// FuzzRoundTrip: every plaintext and context survives both forms, and the
// value fails once its row binding is added or removed.
func FuzzRoundTrip(f *testing.F) {
	c := New(fuzzDEK)
	f.Add([]byte(""), "users", "email", "42", "")
	f.Add([]byte("hunter2"), "credentials", "password", "7", "1001")
	f.Add([]byte("pässwörd ☃ 🔭"), "t", "c", "ユーザー", "-1")
	f.Fuzz(func(t *testing.T, pt []byte, table, column, owner, row string) {
		ctx := &Context{table, column, owner, row}
		raw, err := c.Seal(nil, pt, ctx)
		if err != nil {
			if checkContext(ctx) == nil {
				t.Fatalf("Seal: %v", err)
			}
			return
		}
		if got := mustOpen(t, c, raw, ctx); !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, want %q", got, pt)
		}
		text := mustSealText(t, c, pt, ctx)
		if got, err := c.OpenText(nil, text, ctx); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("OpenText = %q, %v; want %q", got, err, pt)
		}
		other := *ctx
		if other.Row == "" {
			other.Row = "1"
		} else {
			other.Row = ""
		}
		wantInvalid(t, c, raw, &other, "row binding changed")
	})
}
