package envelope_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// With no master key, every read of a non-NULL encrypted value fails with
// ErrNoKey and leaves the field zero, whether the value is a token or not,
// with or without AcceptPlaintext, with or without an owner.
func TestIssue12NoKeyReads(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		const rows = 600 // above the size read on several cores
		creds := make([]Credential, rows)
		for i := range creds {
			creds[i] = Credential{UserID: uint(i%7 + 1), Password: fmt.Sprint("secret-", i), APIKey: ptr("key"), Blob: []byte("blob")}
		}
		must(t, db.CreateInBatches(&creds, 200).Error)
		// Every other row holds non-tokens; one row has no owner.
		raw := testdb.Reopen(t, db)
		must(t, raw.Table("credentials").Where("id % 2 = 0").UpdateColumns(map[string]any{"password": "plain", "api_key": "plain-key", "blob": []byte("plain-blob")}).Error)
		must(t, raw.Table("credentials").Where("id = 3").UpdateColumn("user_id", 0).Error)

		for _, accept := range []bool{false, true} {
			t.Run(fmt.Sprint("AcceptPlaintext=", accept), func(t *testing.T) {
				nokey := testdb.Reopen(t, db)
				must(t, nokey.Use(envelope.New(envelope.Config{Profile: &Profile{}, AcceptPlaintext: accept, Logger: slogLogger(&slogCapture{})})))
				noKey := func(what string, err error) {
					t.Helper()
					if !errors.Is(err, envelope.ErrNoKey) || errors.Is(err, envelope.ErrDecrypt) || errors.Is(err, envelope.ErrNoOwner) {
						t.Errorf("%s: %v, want ErrNoKey only", what, err)
					}
				}
				for _, id := range []uint{1, 2, 3} {
					var c Credential
					noKey(fmt.Sprint("First ", id), nokey.First(&c, id).Error)
					if c.Password != "" || c.APIKey != nil || c.Blob != nil {
						t.Errorf("First %d: fields not zero: %q %v %q", id, c.Password, c.APIKey, c.Blob)
					}
				}
				var all []Credential
				noKey("Find", nokey.Order("id").Find(&all).Error)
				if len(all) != rows {
					t.Fatalf("Find: %d rows", len(all))
				}
				for _, c := range all {
					if c.Password != "" || c.APIKey != nil || c.Blob != nil {
						t.Fatalf("Find: row %d not zero: %q %v %q", c.ID, c.Password, c.APIKey, c.Blob)
					}
				}
				var ptrs []*Credential
				noKey("Find pointers", nokey.Where("id % 2 = 0").Find(&ptrs).Error)
				// NULL stays NULL, with no error.
				must(t, raw.Table("credentials").Where("id = 4").UpdateColumns(map[string]any{"password": nil, "api_key": nil, "blob": nil}).Error)
				var null Credential
				must(t, nokey.First(&null, 4).Error)
				if null.Password != "" || null.APIKey != nil || null.Blob != nil {
					t.Errorf("NULL read as %q %v %q", null.Password, null.APIKey, null.Blob)
				}
			})
		}
	})
}
