package envelope_test

// Fuzz targets for the serializer's read path (whatever a column holds) and
// for the write-then-read round trip. Plain `go test` runs their seeds (the
// files under testdata/fuzz/FuzzScan and the f.Add calls). To fuzz, run one
// target at a time for minutes, locally, not in CI:
//
//	go test -run x -fuzz FuzzScan -fuzztime 5m .
//	go test -run x -fuzz FuzzWriteRead -fuzztime 5m .
//
// Every input that finds new coverage is minimized first, for up to a
// minute each, and the exec counter stands still meanwhile; add
// -fuzzminimizetime 5s to spend the time on new inputs instead.
//
// A failing input is written to testdata/fuzz/<target>/; commit it with the
// fix so it stays a regression test.

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/fernet/fernet-go"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// FuzzScan stores arbitrary bytes in an encrypted column (as text and as a
// blob) with plain SQL and reads the row through GORM. It must never panic,
// and the field is either the plaintext of a token written for the row's
// owner (only when the bytes are that token) or zero with ErrDecrypt.
//
// The owner is the first owner of the shared Python vectors, so their
// tokens are valid seeds and the fuzzer mutates real tokens; whether an
// input should open is decided with fernet-go and a strict base64 decoder,
// not with the plugin.
func FuzzScan(f *testing.F) {
	fernetOnly(f)
	v := loadVectors(f)
	keys, err := dek.ParseKeyring(v.MasterKey)
	must(f, err)
	db := testdb.Open(f, testdb.SQLite)
	setup(f, db, keys)
	o := v.Owners[0]
	rawExec(f, db, "INSERT INTO profiles (user_id, nickname, encrypted_dek) VALUES (?, '', ?)", o.Owner, []byte(o.EncryptedDEK))
	ownerKey, err := fernet.DecodeKey(o.DEK)
	must(f, err)
	keyring := []*fernet.Key{ownerKey}
	row := &Credential{UserID: o.Owner, Facility: "fuzz", Password: "fuzz-original-plaintext"}
	must(f, db.Create(row).Error)
	orig, _ := rawCol(f, db, "password", row.ID)
	f.Add([]byte(orig))

	f.Fuzz(func(t *testing.T, in []byte) {
		// The oracle, independent of the plugin: a value opens only if it is
		// the canonical base64url text of a token that verifies under the
		// owner's DEK (so a vector token or one the plugin wrote).
		plain := fernet.VerifyAndDecrypt(in, 0, keyring)
		canonical := false
		if b, err := base64.URLEncoding.Strict().DecodeString(string(in)); err == nil {
			canonical = base64.URLEncoding.EncodeToString(b) == string(in)
		}
		for _, blob := range []bool{false, true} {
			var arg any = string(in)
			if blob {
				arg = append([]byte{}, in...) // never nil: a nil slice would bind NULL
			}
			rawExec(t, db, "UPDATE credentials SET password = ? WHERE id = ?", arg, row.ID)
			c, err, p := readCredential(db, row.ID)
			switch {
			case p != nil:
				t.Fatalf("blob=%v: got panic %v, want no panic", blob, p)
			case plain != nil && canonical:
				if err != nil || c.Password != string(plain) {
					t.Fatalf("blob=%v: valid token: got %q, %v, want %q, nil", blob, c.Password, err, plain)
				}
			case len(in) == 0: // an empty column reads like NULL
				if (err != nil && !errors.Is(err, envelope.ErrDecrypt)) || c.Password != "" {
					t.Fatalf("blob=%v: empty: got %q, %v, want empty", blob, c.Password, err)
				}
			case !errors.Is(err, envelope.ErrDecrypt) || c.Password != "":
				t.Fatalf("blob=%v: got %q, %v, want %q, %v", blob, c.Password, err, "", envelope.ErrDecrypt)
			}
		}
	})
}

// FuzzWriteRead creates a row whose encrypted fields hold an arbitrary
// string: every column must store a token, never the plaintext (an empty
// plaintext too), the caller's struct keeps its plaintext, and the row
// reads back equal.
func FuzzWriteRead(f *testing.F) {
	db := testdb.Open(f, testdb.SQLite)
	setup(f, db, newKeys(f))
	for _, s := range []string{
		"", "s3cret", "fifteen-bytes!!", "sixteen-bytes!!!", strings.Repeat("x", 1000),
		"gAAAAA" + strings.Repeat("A", 94), // shaped like a token, but none
		"\x00\xff\xfe not UTF-8", "héllo wörld 🌍", " padded ", "=", "NULL",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := &Credential{UserID: 1, Facility: "fuzz", Password: s, APIKey: &s, Blob: []byte(s)}
		if err := db.Create(c).Error; err != nil {
			t.Fatalf("Create: got %v, want nil", err)
		}
		defer rawExec(t, db, "DELETE FROM credentials WHERE id = ?", c.ID)
		if c.Password != s || c.APIKey == nil || *c.APIKey != s || string(c.Blob) != s {
			t.Fatalf("caller's struct: got %q %v %q, want the plaintext %q", c.Password, c.APIKey, c.Blob, s)
		}
		for _, col := range []string{"password", "api_key", "blob"} {
			stored, ok := rawCol(t, db, col, c.ID)
			if !ok || !sealedText(stored) || stored == s {
				t.Fatalf("stored %s: got %q, want a token", col, stored)
			}
		}
		var got Credential
		if err := db.First(&got, c.ID).Error; err != nil {
			t.Fatalf("First: got %v, want nil", err)
		}
		if got.Password != s || got.APIKey == nil || *got.APIKey != s || string(got.Blob) != s {
			t.Fatalf("read back: got %q %v %q, want %q", got.Password, deref(got.APIKey), got.Blob, s)
		}
	})
}
