package envelope_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// StrOwnerCred has a string owner, while the tests' Profile has a uint one.
type StrOwnerCred struct {
	ID       uint
	UserID   string `envelope:"owner"`
	Password string `gorm:"serializer:envelope"`
}

// StrProfile is a profile model with a string owner.
type StrProfile struct {
	ID           uint
	UserID       string `gorm:"size:64;uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// A model whose owner type does not match the profile's (string against
// integer) is refused by every statement, naming both types, before any SQL.
func TestIssue12OwnerTypeMismatch(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, base *gorm.DB) {
		keys := newKeys(t)
		check := func(t *testing.T, db *gorm.DB, log *sqlLog, model any, row any, modelType, profType string) {
			t.Helper()
			log.Reset()
			res := map[string]error{
				"Create": db.Create(row).Error,
				"Find":   db.Find(model).Error,
				"Update": db.Model(model).Where("id = ?", 1).Update("password", "x").Error,
				"Delete": db.Where("id = ?", 1).Delete(model).Error,
			}
			for name, err := range res {
				if err == nil {
					t.Errorf("%s: accepted", name)
					continue
				}
				oneLine(t, err)
				msg := err.Error()
				for _, want := range []string{"field UserID is " + modelType, ".UserID is " + profType, "both owners must be integers, or both strings"} {
					if !strings.Contains(msg, want) {
						t.Errorf("%s: %q does not say %q", name, msg, want)
					}
				}
				if !errors.Is(err, envelope.ErrNoOwner) {
					t.Errorf("%s: %v, want ErrNoOwner", name, err)
				}
			}
			if n := log.count(); n > 0 {
				t.Errorf("SQL was sent:\n%s", log)
			}
		}
		t.Run("string model, uint profile", func(t *testing.T) {
			log := newSQLLog()
			db := testdb.Open(t, testdb.DialectOf(base), testdb.Options{Logger: log})
			setup(t, db, keys)
			must(t, db.AutoMigrate(&StrOwnerCred{}))
			check(t, db, log, &[]StrOwnerCred{}, &StrOwnerCred{UserID: "alice", Password: "p"}, "string", "uint")
		})
		t.Run("uint model, string profile", func(t *testing.T) {
			log := newSQLLog()
			db := testdb.Open(t, testdb.DialectOf(base), testdb.Options{Logger: log})
			must(t, db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &StrProfile{}})))
			must(t, db.AutoMigrate(&StrProfile{}, &Credential{}, &StrOwnerCred{}))
			check(t, db, log, &[]Credential{}, &Credential{UserID: 1, Password: "p"}, "uint", "string")
			// A matching model works.
			must(t, db.Create(&StrOwnerCred{UserID: "alice", Password: "p"}).Error)
			var got StrOwnerCred
			must(t, db.First(&got).Error)
			if got.Password != "p" {
				t.Fatalf("read %q", got.Password)
			}
		})
	})
}
