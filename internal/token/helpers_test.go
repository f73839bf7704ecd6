package token

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/gorm-envelope/envelope/internal/testpy"

	"github.com/fernet/fernet-go"
)

// vectors mirrors shared/testdata/fernet_vectors.json, written by Python's
// cryptography Fernet.
type vectors struct {
	MasterKey      string `json:"master_key"`
	WrongMasterKey string `json:"wrong_master_key"`
	Owners         []struct {
		Owner        int    `json:"owner"`
		DEK          string `json:"dek"`
		EncryptedDEK string `json:"encrypted_dek"`
		Fields       []struct {
			Plaintext string `json:"plaintext"`
			Token     string `json:"token"`
		} `json:"fields"`
	} `json:"owners"`
	TamperedOwner1 string `json:"tampered_token_owner_1"`
	Owner2AsOwner1 string `json:"token_under_owner_2_dek_claimed_by_owner_1"`
}

// vectorsPath is where CI puts shared/ beside the repository checkout.
var vectorsPath = filepath.Join("..", "..", "..", "shared", "testdata", "fernet_vectors.json")

func loadVectors(t testing.TB) *vectors {
	t.Helper()
	data, err := os.ReadFile(vectorsPath)
	if errors.Is(err, os.ErrNotExist) {
		testpy.SkipOrFail(t, "test vectors not found at %s", vectorsPath)
	}
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("parse %s: %v", vectorsPath, err)
	}
	if len(v.Owners) == 0 || v.MasterKey == "" {
		t.Fatalf("%s has no owners or no master key", vectorsPath)
	}
	return &v
}

// keyFromText decodes Fernet key text (44 characters of base64url).
func keyFromText(t testing.TB, s string) [KeySize]byte {
	t.Helper()
	var k [KeySize]byte
	b, err := base64.URLEncoding.DecodeString(s)
	if err != nil || len(b) != KeySize {
		t.Fatalf("bad key text %q: %v (len %d)", s, err, len(b))
	}
	copy(k[:], b)
	return k
}

func randKey(t testing.TB) [KeySize]byte {
	t.Helper()
	var k [KeySize]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// fernetDecrypt decrypts with the reference implementation (no TTL).
func fernetDecrypt(key [KeySize]byte, tok []byte) []byte {
	k := fernet.Key(key)
	return fernet.VerifyAndDecrypt(tok, 0, []*fernet.Key{&k})
}

// mustDecrypt decrypts tok or fails the test.
func mustDecrypt(t testing.TB, c *Cipher, tok []byte) []byte {
	t.Helper()
	msg, err := c.Decrypt(tok)
	if err != nil {
		t.Fatalf("Decrypt(%.40q...): %v", tok, err)
	}
	return msg
}

// wantInvalid checks that tok is rejected with exactly ErrInvalid.
func wantInvalid(t testing.TB, c *Cipher, tok []byte, what string) {
	t.Helper()
	msg, err := c.Decrypt(tok)
	if err != ErrInvalid || msg != nil {
		t.Fatalf("%s: Decrypt = %q, %v; want nil, ErrInvalid", what, msg, err)
	}
}
