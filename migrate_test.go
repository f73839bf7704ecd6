package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// An app adopting the plugin on a table of plaintext: reads fail closed
// until EncryptExisting has run, or accept the plaintext (counted, logged
// once) with Config.AcceptPlaintext; EncryptExisting is resumable and
// leaves tokens alone.
func TestEncryptExisting(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		raw := db.Session(&gorm.Session{NewDB: true})
		for i := 1; i <= 23; i++ {
			var apiKey any
			if i%3 == 0 {
				apiKey = fmt.Sprint("legacy-key-", i)
			}
			must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password, api_key) VALUES (?, ?, ?, ?)",
				1+i%4, fmt.Sprint("f", i), fmt.Sprint("legacy-pw-", i), apiKey).Error)
		}
		var c Credential
		if err := db.First(&c).Error; !errors.Is(err, envelope.ErrDecrypt) || c.Password != "" {
			t.Fatalf("read before migration: %v %q; want ErrDecrypt", err, c.Password)
		}

		logs := &slogCapture{}
		lenient := testdb.Reopen(t, db)
		lp := envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, AcceptPlaintext: true, Logger: slogLogger(logs)})
		must(t, lenient.Use(lp))
		var all []Credential
		must(t, lenient.Order("id").Find(&all).Error)
		if all[0].Password != "legacy-pw-1" || lp.PlaintextReads() != 30 {
			t.Fatalf("lenient read: %q, %d plaintext reads (want 30)", all[0].Password, lp.PlaintextReads())
		}
		if l := logs.Lines(); len(l) != 1 || strings.Contains(l[0], "legacy-pw") {
			t.Fatalf("want one warning without plaintext, got %q", l)
		}

		// A row already written through the plugin is left alone.
		must(t, db.Create(&Credential{UserID: 2, Facility: "new", Password: "already-a-token"}).Error)
		var progress []envelope.MigrateResult
		res, err := envelope.EncryptExisting(context.Background(), db, &Credential{}, envelope.MigrateOptions{
			BatchSize: 7,
			Progress:  func(r envelope.MigrateResult) { progress = append(progress, r) },
		})
		must(t, err)
		if res.Scanned != 24 || res.Encrypted != 30 || len(progress) != 4 {
			t.Fatalf("result %+v after %d batches", res, len(progress))
		}
		var after []Credential
		must(t, db.Order("id").Find(&after).Error)
		for i, c := range after[:23] {
			if c.Password != fmt.Sprint("legacy-pw-", i+1) {
				t.Fatalf("row %d: %q", i, c.Password)
			}
			if (i+1)%3 == 0 && (c.APIKey == nil || *c.APIKey != fmt.Sprint("legacy-key-", i+1)) {
				t.Fatalf("row %d api key: %v", i, c.APIKey)
			}
			if (i+1)%3 != 0 && c.APIKey != nil {
				t.Fatalf("row %d: NULL became %q", i, *c.APIKey)
			}
			stored, _ := rawColumn(t, db, "credentials", "password", c.ID)
			if !sealedText(stored) {
				t.Fatalf("row %d stored %q", i, stored)
			}
		}
		if after[23].Password != "already-a-token" {
			t.Fatal(after[23].Password)
		}
		again, err := envelope.EncryptExisting(context.Background(), db, &Credential{}, envelope.MigrateOptions{})
		if err != nil || again.Encrypted != 0 {
			t.Fatalf("second run: %+v, %v", again, err)
		}
	})
}
