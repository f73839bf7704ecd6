package envelope_test

import (
	"context"
	"errors"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// One Plugin serves one *gorm.DB and every session of it; Use on another
// handle is refused at once, not with a misleading error on every write.
func TestIssue12PluginReused(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, a *gorm.DB) {
		keys := newKeys(t)
		p := setup(t, a, keys)
		b := testdb.Reopen(t, a)
		err := b.Use(p)
		if err == nil {
			t.Fatal("b.Use(p) accepted a Plugin serving another *gorm.DB")
		}
		oneLine(t, err)
		if want := "envelope: this Plugin already serves another *gorm.DB; create one with envelope.New for each"; err.Error() != want {
			t.Errorf("b.Use(p): %q, want %q", err, want)
		}
		if _, ok := b.Config.Plugins[envelope.Name]; ok {
			t.Error("b holds the refused plugin")
		}
		// Sessions, contexts and transactions of a are the same handle.
		must(t, a.Create(&Credential{UserID: 1, Password: "a"}).Error)
		must(t, a.Session(&gorm.Session{}).Create(&Credential{UserID: 1, Password: "session"}).Error)
		must(t, a.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true}).Create(&Credential{UserID: 2, Password: "newdb"}).Error)
		must(t, a.WithContext(context.Background()).Create(&Credential{UserID: 2, Password: "ctx"}).Error)
		tx := a.Begin()
		must(t, tx.Create(&Credential{UserID: 3, Password: "tx"}).Error)
		must(t, tx.Commit().Error)
		if err := a.Session(&gorm.Session{}).Use(p); !errors.Is(err, gorm.ErrRegistered) {
			t.Errorf("Use on a session of a: %v, want gorm.ErrRegistered", err)
		}
		// b with a plugin of its own reads what a wrote, and writes.
		must(t, b.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
		var got []Credential
		must(t, b.Order("id").Find(&got).Error)
		if len(got) != 5 || got[0].Password != "a" || got[4].Password != "tx" {
			t.Fatalf("b read %+v", got)
		}
		must(t, b.Create(&Credential{UserID: 4, Password: "b"}).Error)
		var c Credential
		must(t, a.Where("user_id = 4").First(&c).Error)
		if c.Password != "b" {
			t.Fatalf("a read %q", c.Password)
		}
	})
}
