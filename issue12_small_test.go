package envelope_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// oneLine fails t unless err is a single line.
func oneLine(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

// Ordering by an encrypted column is refused before any SQL is sent, in
// every form; ordering by plain columns and by expressions works.
//
// An expression over an encrypted column (length(password), password IS
// NULL) is raw SQL like a raw WHERE string: the caller's own, and left
// alone — it orders by something of the stored token, never sends a value.
func TestIssue12OrderByEncrypted(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, base *gorm.DB) {
		log := newSQLLog()
		db := testdb.Open(t, testdb.DialectOf(base), testdb.Options{Logger: log})
		setup(t, db, newKeys(t))
		must(t, db.Create(&Credential{UserID: 1, Facility: "b", Password: "p1"}).Error)
		must(t, db.Create(&Credential{UserID: 1, Facility: "a", Password: "p2", APIKey: ptr("k")}).Error)
		log.Reset()

		refused := map[string]struct {
			field string
			res   func() error
		}{
			"clause column": {"Password", func() error {
				return db.Order(clause.OrderByColumn{Column: clause.Column{Name: "password"}}).Find(&[]Credential{}).Error
			}},
			"clause table": {"Password", func() error {
				return db.Order(clause.OrderByColumn{Column: clause.Column{Table: "credentials", Name: "password"}, Desc: true}).Find(&[]Credential{}).Error
			}},
			"clause current": {"APIKey", func() error {
				return db.Order(clause.OrderByColumn{Column: clause.Column{Table: clause.CurrentTable, Name: "api_key"}}).Find(&[]Credential{}).Error
			}},
			"clause OrderBy": {"Blob", func() error {
				return db.Clauses(clause.OrderBy{Columns: []clause.OrderByColumn{{Column: clause.Column{Name: "id"}}, {Column: clause.Column{Name: "blob"}}}}).Find(&[]Credential{}).Error
			}},
			"bare":         {"Password", func() error { return db.Order("password").Find(&[]Credential{}).Error }},
			"bare desc":    {"Password", func() error { return db.Order("password desc").Find(&[]Credential{}).Error }},
			"bare ASC":     {"Password", func() error { return db.Order("password ASC").Find(&[]Credential{}).Error }},
			"nulls last":   {"APIKey", func() error { return db.Order("api_key DESC NULLS LAST").Find(&[]Credential{}).Error }},
			"qualified":    {"Password", func() error { return db.Order("credentials.password").Find(&[]Credential{}).Error }},
			"quoted":       {"Password", func() error { return db.Order(`"credentials"."password" desc`).Find(&[]Credential{}).Error }},
			"backquoted":   {"Password", func() error { return db.Order("`password`").Find(&[]Credential{}).Error }},
			"field name":   {"APIKey", func() error { return db.Order("APIKey").Find(&[]Credential{}).Error }},
			"comma list":   {"Password", func() error { return db.Order("facility, password DESC").Find(&[]Credential{}).Error }},
			"second Order": {"Password", func() error { return db.Order("facility").Order("password").Find(&[]Credential{}).Error }},
			"First":        {"Password", func() error { return db.Order("password").First(&Credential{}).Error }},
			"Take":         {"Password", func() error { return db.Order("password").Take(&Credential{}).Error }},
			"Last":         {"Password", func() error { return db.Order("password").Last(&Credential{}).Error }},
			"Pluck":        {"Password", func() error { return db.Model(&Credential{}).Order("password").Pluck("id", &[]uint{}).Error }},
			"Scan":         {"Password", func() error { return db.Model(&Credential{}).Order("password").Scan(&[]Credential{}).Error }},
			"Rows": {"Password", func() error {
				rows, err := db.Model(&Credential{}).Order("password").Rows()
				if err == nil {
					rows.Close()
				}
				return err
			}},
		}
		for name, c := range refused {
			err := c.res()
			if !errors.Is(err, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, err)
				continue
			}
			oneLine(t, err)
			var fe *envelope.FieldError
			if !errors.As(err, &fe) || fe.Model != "Credential" || fe.Field != c.field {
				t.Errorf("%s: %v, want a FieldError naming Credential.%s", name, err, c.field)
			}
		}
		if n := log.count(); n > 0 {
			t.Errorf("SQL was sent for refused orders:\n%s", log)
		}

		allowed := map[string]func(*[]Credential) error{
			"plain":      func(out *[]Credential) error { return db.Order("facility").Find(out).Error },
			"plain list": func(out *[]Credential) error { return db.Order("facility desc, id").Find(out).Error },
			"plain clause": func(out *[]Credential) error {
				return db.Order(clause.OrderByColumn{Column: clause.Column{Name: "facility"}}).Find(out).Error
			},
			"qualified plain":  func(out *[]Credential) error { return db.Order("credentials.facility").Find(out).Error },
			"length(password)": func(out *[]Credential) error { return db.Order("length(password), id").Find(out).Error },
			"api_key IS NULL":  func(out *[]Credential) error { return db.Order("api_key IS NULL, id").Find(out).Error },
			"expression clause": func(out *[]Credential) error {
				return db.Clauses(clause.OrderBy{Expression: clause.Expr{SQL: "facility"}}).Find(out).Error
			},
			"First": func(out *[]Credential) error { return db.First(&(*out)[0]).Error },
		}
		for name, run := range allowed {
			out := make([]Credential, 1)
			if name != "First" {
				out = nil
			}
			if err := run(&out); err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if len(out) == 0 || out[0].Password == "" {
				t.Errorf("%s: read %+v", name, out)
			}
		}
		var ordered []Credential
		must(t, db.Order("facility").Find(&ordered).Error)
		if len(ordered) != 2 || ordered[0].Password != "p2" {
			t.Fatalf("order by facility: %+v", ordered)
		}
	})
}
