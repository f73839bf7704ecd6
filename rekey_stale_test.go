package envelope_test

import (
	"context"
	"errors"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// Another process that cached an owner's DEK before a Rekey reads the
// owner's values, sealed again under the new DEK, at once: a value that
// does not open under a cached DEK is tried once more under the DEK the
// profile table holds now. A value that opens under neither still fails.
func TestRekeyStaleCacheReads(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		other := testdb.Reopen(t, db)
		if err := other.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: testFormat()})); err != nil {
			t.Fatal(err)
		}
		c := &Credential{UserID: 3, Password: "before-rekey", APIKey: ptr("key")}
		must(t, db.Create(c).Error)
		var got Credential
		must(t, other.First(&got, c.ID).Error) // caches owner 3's DEK
		if _, err := envelope.Rekey(context.Background(), db, uint(3), []any{&Credential{}}, envelope.RekeyOptions{Settle: -1}); err != nil {
			t.Fatal(err)
		}
		got = Credential{}
		if err := other.First(&got, c.ID).Error; err != nil || got.Password != "before-rekey" || *got.APIKey != "key" {
			t.Fatalf("read by a process with the old DEK cached: %q, %v", got.Password, err)
		}
		var all []Credential
		if err := other.Find(&all).Error; err != nil || len(all) != 1 || all[0].Password != "before-rekey" {
			t.Fatalf("Find: %+v, %v", all, err)
		}
		// A value no DEK opens still fails, and stays zero.
		b := []byte(getRaw(t, db, "credentials", "password", c.ID))
		if b[40] == 'A' {
			b[40] = 'B'
		} else {
			b[40] = 'A'
		}
		rawExec(t, db, "UPDATE credentials SET password = ? WHERE id = ?", string(b), c.ID)
		got = Credential{}
		if err := other.First(&got, c.ID).Error; !errors.Is(err, envelope.ErrDecrypt) || got.Password != "" || *got.APIKey != "key" {
			t.Fatalf("a tampered value: %q, %v", got.Password, err)
		}
	})
}
