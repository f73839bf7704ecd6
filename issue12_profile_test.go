package envelope_test

import (
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// SecretProfile is a profile model with an encrypted string.
type SecretProfile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	Motto        string `gorm:"serializer:envelope"`
	EncryptedDEK []byte `envelope:"dek"`
}

// SecretPtrProfile is a profile model with an encrypted *string.
type SecretPtrProfile struct {
	ID           uint
	UserID       uint    `gorm:"uniqueIndex" envelope:"owner"`
	Token        *string `gorm:"serializer:envelope"`
	EncryptedDEK []byte  `envelope:"dek"`
}

// A Profile model with an encrypted field is refused by db.Use, naming
// the model and the field: the profile holds the keys. A caller that
// ignores the error gets errors, never a crash.
func TestIssue12ProfileWithEncryptedField(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		for _, c := range []struct {
			model       any
			name, field string
			create      any
		}{
			{&SecretProfile{}, "SecretProfile", "Motto", &SecretProfile{UserID: 1, Motto: "m"}},
			{&SecretPtrProfile{}, "SecretPtrProfile", "Token", &SecretPtrProfile{UserID: 1, Token: ptr("t")}},
		} {
			err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: c.model}))
			if err == nil {
				t.Fatalf("%s: db.Use accepted a profile with an encrypted field", c.name)
			}
			oneLine(t, err)
			msg := err.Error()
			for _, want := range []string{"profile model " + c.name, "field " + c.field, "cannot have encrypted fields"} {
				if !strings.Contains(msg, want) {
					t.Errorf("%s: %q does not say %q", c.name, msg, want)
				}
			}
			// Ignoring the error must not crash a write of that model.
			must(t, db.AutoMigrate(c.model))
			if err := db.Create(c.create).Error; err == nil {
				t.Errorf("%s: create without the plugin wrote an encrypted field", c.name)
			}
		}
		// The handle stays usable with a valid configuration.
		setup(t, db, keys)
		must(t, db.Create(&Credential{UserID: 1, Password: "ok"}).Error)
	})
}
