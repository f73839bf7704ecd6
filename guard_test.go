package envelope_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// Conditions comparing an encrypted column to a value are refused before
// any SQL is sent; conditions on plain columns still work.
func TestQueryGuards(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, base *gorm.DB) {
		log := newSQLLog()
		db := testdb.Open(t, testdb.DialectOf(base), testdb.Options{Logger: log})
		setup(t, db, newKeys(t))
		must(t, db.Create(&Credential{UserID: 1, Facility: "lco", Password: "guarded-secret"}).Error)
		log.Reset()
		var out []Credential
		cases := map[string]*gorm.DB{
			"Where struct":     db.Where(&Credential{Password: "guarded-secret"}).Find(&out),
			"Where map":        db.Where(map[string]any{"password": "guarded-secret"}).Find(&out),
			"Where map field":  db.Where(map[string]any{"Password": "guarded-secret"}).Find(&out),
			"Not struct":       db.Not(&Credential{Password: "guarded-secret"}).Find(&out),
			"Or map":           db.Where("facility = ?", "x").Or(map[string]any{"password": "guarded-secret"}).Find(&out),
			"First inline":     db.First(&Credential{}, &Credential{Password: "guarded-secret"}),
			"FirstOrCreate":    db.Where(Credential{UserID: 1, Password: "guarded-secret"}).FirstOrCreate(&Credential{}),
			"Pluck":            db.Model(&Credential{}).Where(map[string]any{"password": "guarded-secret"}).Pluck("id", &[]uint{}),
			"Delete":           db.Where(map[string]any{"password": "guarded-secret"}).Delete(&Credential{}),
			"Update condition": db.Model(&Credential{}).Where(map[string]any{"password": "guarded-secret"}).Update("facility", "y"),
			"Count":            db.Model(&Credential{}).Where(&Credential{APIKey: ptr("k")}).Count(new(int64)),
		}
		for name, res := range cases {
			if !errors.Is(res.Error, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, res.Error)
			}
		}
		if sent := log.String(); strings.Contains(sent, "guarded-secret") || log.count() > 0 {
			t.Errorf("SQL was sent for refused conditions:\n%s", log)
		}
		must(t, db.Where(&Credential{UserID: 1, Facility: "lco"}).Find(&out).Error)
		if len(out) != 1 || out[0].Password != "guarded-secret" {
			t.Fatalf("plain conditions: %+v", out)
		}
	})
}
