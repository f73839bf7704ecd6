package dek

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateKeyParses(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != KeyTextLen || seen[k] {
			t.Fatalf("#%d: key of length %d (duplicate %v)", i, len(k), seen[k])
		}
		seen[k] = true
		if _, err := ParseKey(k); err != nil {
			t.Fatalf("#%d: generated key does not parse: %v", i, err)
		}
	}
}

func TestInvalidKeyNeverEchoed(t *testing.T) {
	good, _ := GenerateKey()
	for i, bad := range []string{
		"short-secret-value",
		strings.Repeat("!", KeyTextLen),
		good[:KeyTextLen-1] + "*",
		base64.URLEncoding.EncodeToString([]byte("thirty-one bytes of secret text")) + "AAAA",
	} {
		_, err := ParseKeyring(good, bad)
		if !errors.Is(err, ErrInvalidKey) {
			t.Errorf("#%d: got %v, want ErrInvalidKey", i, err)
			continue
		}
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Source != "previous key 1" {
			t.Errorf("#%d: error does not name the key: %v", i, err)
		}
		if strings.Contains(err.Error(), bad) || strings.Contains(err.Error(), good) || strings.Contains(err.Error(), "\n") {
			t.Errorf("#%d: error echoes the key or spans lines: %v", i, err)
		}
	}
}

func TestKeyringFromEnv(t *testing.T) {
	a, _ := GenerateKey()
	b, _ := GenerateKey()
	c, _ := GenerateKey()
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	if _, err := keyringFromLookup(env(nil)); !errors.Is(err, ErrNoKey) {
		t.Fatalf("unset: %v, want ErrNoKey", err)
	}
	r, err := keyringFromLookup(env(map[string]string{EnvKey: a, EnvKeyPrevious: b + ", " + c + ","}))
	if err != nil || r.Len() != 3 {
		t.Fatalf("got %v keys, %v", r, err)
	}
	_, err = keyringFromLookup(env(map[string]string{EnvKey: a, EnvKeyPrevious: b + ",oops"}))
	if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), EnvKeyPrevious) || strings.Contains(err.Error(), "oops") {
		t.Fatalf("bad previous: %v", err)
	}
	t.Setenv(EnvKey, a)
	t.Setenv(EnvKeyPrevious, "")
	if r, err := KeyringFromEnv(); err != nil || r.Len() != 1 {
		t.Fatalf("KeyringFromEnv: %v", err)
	}
}

func TestSealOpenAcrossKeys(t *testing.T) {
	ctx := context.Background()
	oldK, _ := GenerateKey()
	newK, _ := GenerateKey()
	old, _ := ParseKeyring(oldK)
	both, _ := ParseKeyring(newK, oldK)
	d, _ := NewDEK()
	enc, err := old.Seal(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	got, idx, err := both.Open(ctx, enc)
	if err != nil || got != d || idx != 1 {
		t.Fatalf("open under previous key: idx %d, err %v, equal %v", idx, err, got == d)
	}
	enc2, _ := both.Seal(ctx, d)
	if _, idx, _ := both.Open(ctx, enc2); idx != 0 {
		t.Fatalf("sealed under primary opened by key %d", idx)
	}
	if _, _, err := old.Open(ctx, enc2); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("old keyring opened a DEK sealed under the new key: %v", err)
	}
	if _, _, err := both.Open(ctx, Tombstone()); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("tombstone opened: %v", err)
	}
}

func TestDEKNeverPrinted(t *testing.T) {
	d, _ := NewDEK()
	text := d.text()
	k, _ := GenerateKey()
	fk, _ := ParseKey(k)
	for _, s := range []string{fmt.Sprint(d), fmt.Sprintf("%v %+v %#v %s %x", d, d, d, d, d), fmt.Sprintf("%v %#v", fk, fk)} {
		if strings.Contains(s, string(text[:])) || strings.Contains(s, k) || strings.Contains(s, fmt.Sprintf("%x", d[:])) {
			t.Fatalf("printed key material: %s", s)
		}
	}
}

// The shared vectors were made by Python's cryptography in TOM Toolkit's layout.
func TestVectors(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "shared", "testdata", "fernet_vectors.json"))
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	var v struct {
		MasterKey      string `json:"master_key"`
		WrongMasterKey string `json:"wrong_master_key"`
		Owners         []struct {
			DEK          string `json:"dek"`
			EncryptedDEK string `json:"encrypted_dek"`
		} `json:"owners"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	right, err := ParseKeyring(v.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	wrong, _ := ParseKeyring(v.WrongMasterKey)
	for i, o := range v.Owners {
		d, idx, err := right.Open(ctx, []byte(o.EncryptedDEK))
		if err != nil || idx != 0 {
			t.Fatalf("#%d: %v", i, err)
		}
		if text := d.text(); string(text[:]) != o.DEK {
			t.Errorf("#%d: got a different DEK", i)
		}
		if _, _, err := wrong.Open(ctx, []byte(o.EncryptedDEK)); !errors.Is(err, ErrDecrypt) {
			t.Errorf("#%d: wrong master key: %v, want ErrDecrypt", i, err)
		}
	}
}

type unavailable struct{}

func (unavailable) Encrypt(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("kms unavailable")
}
func (unavailable) Decrypt(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("kms unavailable")
}

// A key that cannot be asked is not reported as "no key opens this DEK".
func TestOpenReportsUnavailableKey(t *testing.T) {
	k, _ := GenerateKey()
	fk, _ := ParseKey(k)
	other, _ := ParseKeyring(k)
	d, _ := NewDEK()
	sealed, _ := other.Seal(context.Background(), d)
	r, _ := NewKeyring(unavailable{})
	_, _, err := r.Open(context.Background(), sealed)
	if err == nil || errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), "kms unavailable") {
		t.Fatalf("got %v, want the key's own error, not ErrDecrypt", err)
	}
	r, _ = NewKeyring(unavailable{}, fk)
	if got, idx, err := r.Open(context.Background(), sealed); err != nil || got != d || idx != 1 {
		t.Fatalf("second key: idx %d, %v", idx, err)
	}
}
