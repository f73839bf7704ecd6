package kms_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"gocloud.dev/secrets"
	"golang.org/x/crypto/nacl/secretbox"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/dek/dektest"
	"github.com/gorm-envelope/envelope/kms"
)

// fakeAWSKMS speaks enough of the AWS KMS JSON API (Encrypt, Decrypt) to
// drive the AWS SDK end to end. Like AWS, it decrypts a ciphertext with
// the key recorded in it, and refuses with IncorrectKeyException only when
// the request names another key.
type fakeAWSKMS struct {
	mu       sync.Mutex
	keys     map[string]*[32]byte
	disabled map[string]bool
}

func newFakeAWSKMS(t *testing.T) string {
	f := &fakeAWSKMS{keys: map[string]*[32]byte{}, disabled: map[string]bool{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

func (f *fakeAWSKMS) key(id string) *[32]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[id]
	if !ok {
		k = new([32]byte)
		rand.Read(k[:])
		f.keys[id] = k
	}
	return k
}

func (f *fakeAWSKMS) fail(w http.ResponseWriter, typ string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"__type": typ, "message": typ})
}

func (f *fakeAWSKMS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req struct {
		KeyId          string
		Plaintext      []byte
		CiphertextBlob []byte
	}
	if err := json.Unmarshal(body, &req); err != nil {
		f.fail(w, "SerializationException")
		return
	}
	var resp any
	switch r.Header.Get("X-Amz-Target") {
	case "TrentService.Encrypt":
		if req.KeyId == "" || strings.Contains(req.KeyId, "\x00") {
			f.fail(w, "ValidationException")
			return
		}
		var nonce [24]byte
		rand.Read(nonce[:])
		blob := append([]byte(req.KeyId+"\x00"), nonce[:]...)
		blob = secretbox.Seal(blob, req.Plaintext, &nonce, f.key(req.KeyId))
		resp = map[string]any{"KeyId": req.KeyId, "CiphertextBlob": blob}
	case "TrentService.Decrypt":
		id, rest, ok := strings.Cut(string(req.CiphertextBlob), "\x00")
		if !ok || len(rest) < 24 {
			f.fail(w, "InvalidCiphertextException")
			return
		}
		if req.KeyId != "" && req.KeyId != id {
			f.fail(w, "IncorrectKeyException")
			return
		}
		f.mu.Lock()
		off := f.disabled[id]
		f.mu.Unlock()
		if off {
			f.fail(w, "DisabledException")
			return
		}
		var nonce [24]byte
		copy(nonce[:], rest)
		pt, ok := secretbox.Open(nil, []byte(rest[24:]), &nonce, f.key(id))
		if !ok {
			f.fail(w, "InvalidCiphertextException")
			return
		}
		resp = map[string]any{"KeyId": id, "Plaintext": pt}
	default:
		f.fail(w, "UnknownOperationException")
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(resp)
}

func awsURL(endpoint, key string) string {
	return "awskms://" + key + "?region=us-east-1&anonymous=true&endpoint=" + endpoint
}

func TestAWSKeeperConformance(t *testing.T) {
	endpoint := newFakeAWSKMS(t)
	n := 0
	dektest.Run(t, dektest.Harness{
		New: func(t *testing.T) (dek.Encrypter, dek.Encrypter) {
			n++
			a, err := kms.Open(context.Background(), awsURL(endpoint, "alias/a"+string(rune('a'+n))))
			if err != nil {
				t.Fatal(err)
			}
			b, err := kms.Open(context.Background(), awsURL(endpoint, "alias/b"+string(rune('a'+n))))
			if err != nil {
				t.Fatal(err)
			}
			return a, b
		},
	})
}

// A keyring of two AWS keys tells them apart, so a rotation between them
// has DEKs to move. gocloud's own awskms keeper, which does not name its
// key in Decrypt, opens the other key's DEKs as its own.
func TestAWSKeysTellEachOtherApart(t *testing.T) {
	ctx := context.Background()
	endpoint := newFakeAWSKMS(t)
	oldK, err := kms.Open(ctx, awsURL(endpoint, "alias/old"))
	if err != nil {
		t.Fatal(err)
	}
	newK, err := kms.Open(ctx, awsURL(endpoint, "alias/new"))
	if err != nil {
		t.Fatal(err)
	}
	d, _ := dek.NewDEK()
	oldRing, _ := dek.NewKeyring(oldK)
	sealed, err := oldRing.Seal(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := dek.NewKeyring(newK, oldK)
	got, idx, err := ring.Open(ctx, sealed)
	if err != nil || got != d || idx != 1 {
		t.Fatalf("DEK under the old AWS key: idx %d, %v; want it opened by previous key 1", idx, err)
	}
	if _, err := newK.Decrypt(ctx, sealed); !errors.Is(err, dek.ErrDecrypt) {
		t.Fatalf("new key on the old key's ciphertext: %v, want ErrDecrypt", err)
	}

	plain, err := secrets.OpenKeeper(ctx, awsURL(endpoint, "alias/new"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.Decrypt(ctx, sealed); err == nil {
		t.Log("gocloud's awskms keeper opens another key's ciphertext: Open's own AWS keeper is needed")
	} else {
		t.Logf("gocloud's awskms keeper now refuses another key's ciphertext (%v): Open's own AWS keeper may be dropped", err)
	}
}

// An AWS key that is disabled or refused is reported, not taken for "not
// this key".
func TestAWSRefusalIsNotErrDecrypt(t *testing.T) {
	ctx := context.Background()
	f := &fakeAWSKMS{keys: map[string]*[32]byte{}, disabled: map[string]bool{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	k, err := kms.Open(ctx, awsURL(srv.URL, "alias/k"))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := k.Encrypt(ctx, []byte("dek text"))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.disabled["alias/k"] = true
	f.mu.Unlock()
	_, err = k.Decrypt(ctx, ct)
	var ke *kms.Error
	if errors.Is(err, dek.ErrDecrypt) || !errors.As(err, &ke) || !strings.Contains(err.Error(), "DisabledException") {
		t.Fatalf("disabled key: %v; want a *kms.Error naming DisabledException", err)
	}
	if strings.Contains(err.Error(), srv.URL) || strings.Contains(err.Error(), "dek text") {
		t.Fatalf("error shows the endpoint or plaintext: %v", err)
	}
}
