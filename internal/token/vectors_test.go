package token

import (
	"bytes"
	"testing"
)

// TestVectors decrypts the tokens Python's cryptography Fernet wrote for the
// envelope layout: field values under each owner's DEK, each DEK's text
// under the master key, and the negative cases.
func TestVectors(t *testing.T) {
	v := loadVectors(t)
	master := New(keyFromText(t, v.MasterKey))
	wrongMaster := New(keyFromText(t, v.WrongMasterKey))

	deks := map[int]*Cipher{}
	fields := 0
	for _, o := range v.Owners {
		// The encrypted DEK is a token of the DEK's key text.
		got := mustDecrypt(t, master, []byte(o.EncryptedDEK))
		if string(got) != o.DEK {
			t.Errorf("owner %d: encrypted_dek decrypts to %q, want %q", o.Owner, got, o.DEK)
		}
		wantInvalid(t, wrongMaster, []byte(o.EncryptedDEK), "encrypted_dek under wrong master key")

		dek := New(keyFromText(t, o.DEK))
		deks[o.Owner] = dek
		wantInvalid(t, dek, []byte(o.EncryptedDEK), "encrypted_dek under the DEK itself")
		for i, f := range o.Fields {
			if !LooksLikeString(f.Token) {
				t.Errorf("owner %d field %d: LooksLikeString = false", o.Owner, i)
			}
			got := mustDecrypt(t, dek, []byte(f.Token))
			if !bytes.Equal(got, []byte(f.Plaintext)) {
				t.Errorf("owner %d field %d: got %q, want %q", o.Owner, i, got, f.Plaintext)
			}
			if got == nil {
				t.Errorf("owner %d field %d: nil plaintext", o.Owner, i)
			}
			wantInvalid(t, master, []byte(f.Token), "field token under master key")
			wantInvalid(t, wrongMaster, []byte(f.Token), "field token under wrong master key")
			fields++
		}
	}
	if fields == 0 {
		t.Fatal("no field tokens in vectors")
	}
	// A DEK must not open another owner's fields.
	for _, o := range v.Owners {
		for other, dek := range deks {
			if other == o.Owner {
				continue
			}
			for _, f := range o.Fields {
				wantInvalid(t, dek, []byte(f.Token), "field token under another owner's DEK")
			}
		}
	}

	d1, d2 := deks[1], deks[2]
	if d1 == nil || d2 == nil {
		t.Fatal("vectors lack owner 1 or owner 2")
	}
	wantInvalid(t, d1, []byte(v.TamperedOwner1), "tampered token")
	wantInvalid(t, d1, []byte(v.Owner2AsOwner1), "owner 2's token under owner 1's DEK")
	// The cross-owner token is genuine under owner 2's DEK, so the check
	// above fails for the right reason.
	mustDecrypt(t, d2, []byte(v.Owner2AsOwner1))
}
