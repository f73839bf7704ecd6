// Package dektest is a conformance suite for implementations of
// dek.Encrypter: every master-key backend (an in-memory Fernet key, a KMS
// keeper) must pass the same tests.
package dektest

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/gorm-envelope/envelope/dek"
)

// Harness makes the encrypters under test.
type Harness struct {
	// New returns a fresh encrypter, and a second one with another key.
	New func(t *testing.T) (e, other dek.Encrypter)
	// Secret, if set, returns strings that must never appear in an
	// error (such as the key's text).
	Secret func() []string
}

// Run runs the conformance tests.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()
	t.Run("RoundTrip", func(t *testing.T) {
		e, _ := h.New(t)
		for i, pt := range [][]byte{{}, []byte("x"), bytes.Repeat([]byte("DEK"), 15), bytes.Repeat([]byte{0}, 4096)} {
			ct, err := e.Encrypt(ctx, pt)
			if err != nil {
				t.Fatalf("#%d: Encrypt: %v", i, err)
			}
			if len(pt) >= 8 && bytes.Contains(ct, pt) {
				t.Fatalf("#%d: ciphertext contains the plaintext", i)
			}
			got, err := e.Decrypt(ctx, ct)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("#%d: got %q, %v; want the plaintext", i, got, err)
			}
		}
	})
	t.Run("Randomized", func(t *testing.T) {
		e, _ := h.New(t)
		a, _ := e.Encrypt(ctx, []byte("same"))
		b, _ := e.Encrypt(ctx, []byte("same"))
		if bytes.Equal(a, b) {
			t.Fatal("two encryptions of one plaintext are equal")
		}
	})
	t.Run("WrongKey", func(t *testing.T) {
		e, other := h.New(t)
		ct, err := e.Encrypt(ctx, []byte("dek text"))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := other.Decrypt(ctx, ct); !errors.Is(err, dek.ErrDecrypt) || got != nil {
			t.Fatalf("another key: got %q, %v; want ErrDecrypt", got, err)
		}
		checkSecret(t, h, err)
	})
	t.Run("Malformed", func(t *testing.T) {
		e, _ := h.New(t)
		ct, err := e.Encrypt(ctx, []byte("dek text"))
		if err != nil {
			t.Fatal(err)
		}
		bad := [][]byte{nil, {}, []byte("garbage"), ct[:len(ct)/2], append(append([]byte{}, ct...), 'x')}
		flipped := append([]byte{}, ct...)
		flipped[len(flipped)/2] ^= 0x01
		bad = append(bad, flipped)
		for i, b := range bad {
			got, err := e.Decrypt(ctx, b)
			if !errors.Is(err, dek.ErrDecrypt) || got != nil {
				t.Errorf("#%d: got %q, %v; want ErrDecrypt", i, got, err)
			}
			checkSecret(t, h, err)
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		e, _ := h.New(t)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20; i++ {
					pt := []byte{byte(g), byte(i)}
					ct, err := e.Encrypt(ctx, pt)
					if err != nil {
						errs <- err
						return
					}
					got, err := e.Decrypt(ctx, ct)
					if err != nil || !bytes.Equal(got, pt) {
						errs <- errors.New("concurrent round trip failed")
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})
	t.Run("Keyring", func(t *testing.T) {
		e, other := h.New(t)
		oldRing, err := dek.NewKeyring(other)
		if err != nil {
			t.Fatal(err)
		}
		ring, err := dek.NewKeyring(e, other)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := dek.NewDEK()
		sealed, err := oldRing.Seal(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		got, idx, err := ring.Open(ctx, sealed)
		if err != nil || got != d || idx != 1 {
			t.Fatalf("previous key: idx %d, %v", idx, err)
		}
		resealed, _ := ring.Seal(ctx, d)
		if _, idx, err := ring.Open(ctx, resealed); err != nil || idx != 0 {
			t.Fatalf("primary: idx %d, %v", idx, err)
		}
	})
	t.Run("Bound", func(t *testing.T) {
		// A DEK sealed bound to a profile row through the encrypter opens
		// with that binding only, under whichever key of the ring sealed it.
		e, other := h.New(t)
		oldRing, err := dek.NewKeyring(other)
		if err != nil {
			t.Fatal(err)
		}
		ring, err := dek.NewKeyring(e, other)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := dek.NewDEK()
		b := dek.Binding{Table: "profiles", Owner: "2"}
		for i, r := range []*dek.Keyring{ring, oldRing} {
			sealed, err := r.SealBound(ctx, d, b)
			if err != nil {
				t.Fatalf("#%d: SealBound: %v", i, err)
			}
			got, idx, bound, err := ring.OpenBound(ctx, sealed, b)
			if err != nil || got != d || idx != i || !bound {
				t.Fatalf("#%d: OpenBound: idx %d, bound %v, same DEK %v, %v", i, idx, bound, got == d, err)
			}
			got, _, _, err = ring.OpenBound(ctx, sealed, dek.Binding{Table: "profiles", Owner: "1"})
			if !errors.Is(err, dek.ErrBoundElsewhere) || got != (dek.DEK{}) {
				t.Fatalf("#%d: copied to owner 1: %v, want ErrBoundElsewhere", i, err)
			}
			checkSecret(t, h, err)
			if _, _, err := ring.Open(ctx, sealed); !errors.Is(err, dek.ErrDecrypt) {
				t.Fatalf("#%d: Open without the binding: %v, want ErrDecrypt", i, err)
			}
		}
		legacy, err := ring.Seal(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if got, idx, bound, err := ring.OpenBound(ctx, legacy, b); err != nil || got != d || idx != 0 || bound {
			t.Fatalf("legacy layout: idx %d, bound %v, %v", idx, bound, err)
		}
	})
}

func checkSecret(t *testing.T, h Harness, err error) {
	t.Helper()
	if err == nil || h.Secret == nil {
		return
	}
	for _, s := range h.Secret() {
		if s != "" && bytes.Contains([]byte(err.Error()), []byte(s)) {
			t.Fatalf("error holds key material: %v", err)
		}
	}
}
