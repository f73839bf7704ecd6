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

// Every GORM write path stores a Fernet token, never the plaintext, logs
// no plaintext at Info level, and reads back.
func TestWritePaths(t *testing.T) {
	type path struct {
		name  string
		write func(t *testing.T, db *gorm.DB, secret string) uint // returns the row id
	}
	seed := func(t *testing.T, db *gorm.DB) *Credential {
		c := &Credential{UserID: 7, Facility: "lco", Password: "seed-password"}
		if err := db.Create(c).Error; err != nil {
			t.Fatalf("seed: %v", err)
		}
		return c
	}
	paths := []path{
		{"Create", func(t *testing.T, db *gorm.DB, s string) uint {
			c := &Credential{UserID: 7, Password: s}
			must(t, db.Create(c).Error)
			if c.Password != s {
				t.Errorf("caller's struct changed: %q", c.Password)
			}
			return c.ID
		}},
		{"CreateSlice", func(t *testing.T, db *gorm.DB, s string) uint {
			cs := []*Credential{{UserID: 7, Password: s}, {UserID: 8, Password: s}}
			must(t, db.Create(&cs).Error)
			return cs[1].ID
		}},
		{"CreateInBatches", func(t *testing.T, db *gorm.DB, s string) uint {
			cs := make([]Credential, 25)
			for i := range cs {
				cs[i] = Credential{UserID: uint(100 + i%5), Password: s}
			}
			must(t, db.CreateInBatches(&cs, 10).Error)
			return cs[24].ID
		}},
		{"Save", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			c.Password = s
			must(t, db.Save(c).Error)
			return c.ID
		}},
		{"SaveNew", func(t *testing.T, db *gorm.DB, s string) uint {
			c := &Credential{UserID: 9, Password: s}
			must(t, db.Save(c).Error)
			return c.ID
		}},
		{"FirstOrCreateAttrs", func(t *testing.T, db *gorm.DB, s string) uint {
			var c Credential
			must(t, db.Where(Credential{UserID: 11, Facility: "new"}).Attrs(Credential{Password: s}).FirstOrCreate(&c).Error)
			return c.ID
		}},
		{"FirstOrCreateAssignStruct", func(t *testing.T, db *gorm.DB, s string) uint {
			seed(t, db)
			var c Credential
			must(t, db.Where(Credential{UserID: 7, Facility: "lco"}).Assign(Credential{Password: s}).FirstOrCreate(&c).Error)
			if c.Password != s {
				t.Errorf("dest Password = %q", c.Password)
			}
			return c.ID
		}},
		{"FirstOrCreateAssignMap", func(t *testing.T, db *gorm.DB, s string) uint {
			seed(t, db)
			var c Credential
			must(t, db.Where(Credential{UserID: 7, Facility: "lco"}).Assign(map[string]any{"password": s}).FirstOrCreate(&c).Error)
			return c.ID
		}},
		{"UpdatesStruct", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			must(t, db.Model(c).Updates(Credential{Password: s}).Error)
			if c.Password != s {
				t.Errorf("model Password = %q", c.Password)
			}
			return c.ID
		}},
		{"UpdateColumn", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			must(t, db.Model(c).Update("password", s).Error)
			if c.Password != s {
				t.Errorf("model Password = %q, want the plaintext", c.Password)
			}
			return c.ID
		}},
		{"UpdatesMap", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			m := map[string]any{"Password": s, "facility": "x"}
			must(t, db.Model(c).Updates(m).Error)
			if m["Password"] != s {
				t.Errorf("caller's map changed: %v", m["Password"])
			}
			if c.Password != s {
				t.Errorf("model Password = %q", c.Password)
			}
			return c.ID
		}},
		{"UpdateColumnNoHooks", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			must(t, db.Model(c).UpdateColumn("password", s).Error)
			return c.ID
		}},
		{"UpdateColumnsMap", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			must(t, db.Model(c).UpdateColumns(map[string]any{"password": s}).Error)
			return c.ID
		}},
		{"UpdateColumnsStruct", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			must(t, db.Model(c).UpdateColumns(Credential{Password: s}).Error)
			return c.ID
		}},
		{"OnConflictAssignments", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			dup := &Credential{ID: c.ID, UserID: 7, Password: "ignored"}
			// The conflict target (id) does not determine the owner, so the
			// row is rewritten whole: owner and every encrypted column.
			must(t, db.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "id"}},
				DoUpdates: append(clause.Assignments(map[string]any{"password": s}), clause.AssignmentColumns([]string{"user_id", "api_key", "blob"})...),
			}).Create(dup).Error)
			return c.ID
		}},
		{"OnConflictExcluded", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			dup := &Credential{ID: c.ID, UserID: 7, Password: s}
			must(t, db.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "id"}},
				DoUpdates: clause.AssignmentColumns([]string{"user_id", "password", "api_key", "blob"}),
			}).Create(dup).Error)
			return c.ID
		}},
		{"OnConflictUpdateAll", func(t *testing.T, db *gorm.DB, s string) uint {
			c := seed(t, db)
			dup := &Credential{ID: c.ID, UserID: 7, Password: s}
			must(t, db.Clauses(clause.OnConflict{UpdateAll: true}).Create(dup).Error)
			return c.ID
		}},
		{"CreateMap", func(t *testing.T, db *gorm.DB, s string) uint {
			m := map[string]any{"UserID": 12, "Password": s, "Facility": "map"}
			must(t, db.Model(&Credential{}).Create(m).Error)
			if m["Password"] != s {
				t.Errorf("caller's map changed: %v", m["Password"])
			}
			var c Credential
			must(t, db.Where("facility = ?", "map").First(&c).Error)
			return c.ID
		}},
		{"CreateSliceOfMaps", func(t *testing.T, db *gorm.DB, s string) uint {
			ms := []map[string]any{{"user_id": 13, "password": s, "facility": "m1"}, {"user_id": 14, "password": s, "facility": "m2"}}
			must(t, db.Model(&Credential{}).Create(&ms).Error)
			var c Credential
			must(t, db.Where("facility = ?", "m2").First(&c).Error)
			return c.ID
		}},
		{"Transaction", func(t *testing.T, db *gorm.DB, s string) uint {
			var id uint
			must(t, db.Transaction(func(tx *gorm.DB) error {
				c := &Credential{UserID: 15, Password: s}
				if err := tx.Create(c).Error; err != nil {
					return err
				}
				id = c.ID
				return tx.Model(c).Update("password", s).Error
			}))
			return id
		}},
	}
	testdb.ForEach(t, func(t *testing.T, base *gorm.DB) {
		d := testdb.DialectOf(base)
		for _, p := range paths {
			t.Run(p.name, func(t *testing.T) {
				log := newSQLLog()
				db := testdb.Open(t, d, testdb.Options{Logger: log})
				setup(t, db, newKeys(t))
				secret := "plaintext-marker-" + strings.ToLower(p.name)
				id := p.write(t, db, secret)
				if t.Failed() {
					return
				}
				stored, ok := rawColumn(t, db, "credentials", "password", id)
				if !ok || !sealedText(stored) {
					t.Fatalf("stored password = %q, want a Fernet token", stored)
				}
				if strings.Contains(log.String(), secret) {
					t.Errorf("GORM log holds the plaintext:\n%s", log.String())
				}
				var got Credential
				must(t, db.First(&got, id).Error)
				if got.Password != secret {
					t.Errorf("read back %q, want %q", got.Password, secret)
				}
			})
		}
	})
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Writes without an owner are refused with ErrNoOwner and write nothing.
func TestNoOwner(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		err := db.Create(&Credential{Password: "no-owner"}).Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("Create without owner: %v, want ErrNoOwner", err)
		}
		err = db.Model(&Credential{}).Where("facility = ?", "x").Update("password", "no-owner").Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("Update without owner: %v, want ErrNoOwner", err)
		}
		a := &Credential{UserID: 1, Password: "a"}
		b := &Credential{UserID: 2, Password: "b"}
		must(t, db.Create(a).Error)
		must(t, db.Create(b).Error)
		err = db.Model(&[]Credential{*a, *b}).Update("password", "both").Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("Update over two owners: %v, want ErrNoOwner", err)
		}
		var n int64
		must(t, db.Model(&Credential{}).Count(&n).Error)
		if n != 2 {
			t.Fatalf("%d rows, want 2", n)
		}
	})
}

// Expressions and subqueries assigned to encrypted columns are refused.
func TestUnsafeAssignmentsRefused(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Facility: "plain-facility", Password: "p"}
		must(t, db.Create(c).Error)
		cases := map[string]*gorm.DB{
			"Expr":     db.Model(c).Update("password", gorm.Expr("facility")),
			"Subquery": db.Model(c).Update("password", db.Model(&Credential{}).Select("facility").Limit(1)),
			"IntValue": db.Model(c).Update("password", 42),
			"OnConflictColumn": db.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "id"}},
				DoUpdates: []clause.Assignment{{Column: clause.Column{Name: "password"}, Value: clause.Column{Table: "excluded", Name: "facility"}}},
			}).Create(&Credential{ID: c.ID, UserID: 1, Facility: "f", Password: "x"}),
		}
		for name, res := range cases {
			if !errors.Is(res.Error, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, res.Error)
			}
		}
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.Password != "p" {
			t.Fatalf("password = %q after refused updates", got.Password)
		}
	})
}

// CredentialPatch updates the password column without the serializer tag.
type CredentialPatch struct {
	Password string
}

// TaggedPatch updates it with the tag, and borrows the model's owner.
type TaggedPatch struct {
	Password string `gorm:"serializer:envelope"`
}

func TestUpdatesWithOtherStructType(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 4, Password: "before"}
		must(t, db.Create(c).Error)
		err := db.Model(c).Updates(CredentialPatch{Password: "untagged-plaintext"}).Error
		if !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("untagged patch: %v, want ErrUnsafe", err)
		}
		stored, _ := rawColumn(t, db, "credentials", "password", c.ID)
		if strings.Contains(stored, "untagged") {
			t.Fatal("plaintext stored")
		}
		must(t, db.Model(c).Updates(&TaggedPatch{Password: "tagged"}).Error)
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.Password != "tagged" {
			t.Fatalf("read %q", got.Password)
		}
	})
}

// Writes by table name alone cannot encrypt: refused for known tables.
func TestTableOnlyWritesRefused(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 4, Password: "before"}
		must(t, db.Create(c).Error)
		for name, res := range map[string]*gorm.DB{
			"Create": db.Table("credentials").Create(map[string]any{"user_id": 4, "password": "table-plaintext"}),
			"Update": db.Table("credentials").Where("id = ?", c.ID).Update("password", "table-plaintext"),
		} {
			if !errors.Is(res.Error, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, res.Error)
			}
		}
		must(t, db.Table("credentials").Where("id = ?", c.ID).Update("facility", "plain columns are fine").Error)
		var n int64
		must(t, db.Table("credentials").Where("password LIKE ?", "%table-plaintext%").Count(&n).Error)
		if n != 0 {
			t.Fatal("plaintext stored")
		}
	})
}

// A partial update may not move a row to another owner; Save may.
func TestOwnerChange(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Password: "p", APIKey: ptr("k")}
		must(t, db.Create(c).Error)
		for name, res := range map[string]*gorm.DB{
			"Update":        db.Model(c).Update("user_id", 2),
			"UpdatesMap":    db.Model(c).Updates(map[string]any{"UserID": "2", "password": "q"}),
			"UpdatesStruct": db.Model(c).Updates(Credential{UserID: 2}),
			"UpdatesMapPtr": db.Model(c).Updates(&map[string]any{"user_id": 2, "facility": "f"}),
		} {
			if !errors.Is(res.Error, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, res.Error)
			}
		}
		must(t, db.Model(c).Updates(map[string]any{"user_id": 1, "password": "same owner"}).Error)
		c.UserID = 2
		must(t, db.Save(c).Error)
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.UserID != 2 || got.Password != "same owner" || *got.APIKey != "k" {
			t.Fatalf("after Save to a new owner: %+v", got)
		}
	})
}

// Equal plaintexts written by one statement, for one owner, get distinct
// tokens: the stored column does not show which rows hold the same secret.
// A map written in the same statement shape still gets its own token.
func TestEqualPlaintextsDistinctTokens(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		rows := []Credential{
			{UserID: 1, Password: "same", APIKey: ptr("same")},
			{UserID: 1, Password: "same", APIKey: ptr("same")},
			{UserID: 1, Password: "same"},
		}
		must(t, db.Create(&rows).Error)
		seen := map[string]bool{}
		for _, r := range rows {
			for _, col := range []string{"password", "api_key"} {
				tok, ok := rawColumn(t, db, "credentials", col, r.ID)
				if !ok {
					continue
				}
				if seen[tok] {
					t.Fatalf("row %d %s repeats a token", r.ID, col)
				}
				seen[tok] = true
			}
		}
		if len(seen) != 5 {
			t.Fatalf("%d tokens, want 5", len(seen))
		}
		var got []Credential
		must(t, db.Order("id").Find(&got).Error)
		for _, g := range got {
			if g.Password != "same" {
				t.Fatalf("row %d: %q", g.ID, g.Password)
			}
		}
	})
}
