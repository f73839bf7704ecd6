package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/rotate"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// IxUser is a users table that logs in by email: self-owned, with a
// unique global index of its encrypted email.
type IxUser struct {
	ID       uint    `envelope:"owner"`
	Name     string  `gorm:"size:64"`
	Email    string  `gorm:"serializer:envelope"`
	EmailIdx *string `gorm:"size:80;uniqueIndex" envelope:"index:Email;scope:global;transform:trim,lower"`
}

// TaxRecord has a per-owner 8-bit index (many false positives) and a
// global 8-bit one.
type TaxRecord struct {
	ID       uint
	UserID   uint    `envelope:"owner"`
	TaxID    *string `gorm:"serializer:envelope"`
	TaxIdx   *string `gorm:"size:16;index" envelope:"index:TaxID;bits:8;transform:digits"`
	Phone    string  `gorm:"serializer:envelope"`
	PhoneIdx string  `gorm:"size:16;index" envelope:"index:Phone;scope:global;bits:8;transform:digits"`
}

func TestMatchLoginByEmail(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&IxUser{}))
		ada := &IxUser{Name: "ada", Email: "Ada@Example.org"}
		must(t, db.Create(ada).Error)
		must(t, db.Create(&[]IxUser{{Name: "bob", Email: "bob@example.org"}, {Name: "cy", Email: "cy@example.org"}}).Error)

		var got IxUser
		must(t, db.Where(envelope.Match("Email", "  ada@EXAMPLE.org ")).First(&got).Error)
		if got.ID != ada.ID || got.Email != "Ada@Example.org" {
			t.Fatalf("got %+v, want ada", got)
		}
		err := db.Where(envelope.Match("Email", "nobody@example.org")).First(&IxUser{}).Error
		if !errors.Is(err, gorm.ErrRecordNotFound) {
			t.Fatalf("no match: %v", err)
		}
		var n int64
		must(t, db.Model(&IxUser{}).Where(envelope.Match("Email", "bob@example.org")).Count(&n).Error)
		if n != 1 {
			t.Fatalf("count %d", n)
		}
		// The unique index refuses a second account for one address.
		err = db.Create(&IxUser{Name: "ada2", Email: "ada@example.org"}).Error
		if !errors.Is(err, envelope.ErrDuplicate) || !errors.Is(err, gorm.ErrDuplicatedKey) {
			t.Fatalf("duplicate email: %v", err)
		}
		if strings.Contains(err.Error(), "ada@example.org") {
			t.Fatalf("plaintext in error: %v", err)
		}
		// A changed email moves the index with it, on every update path.
		must(t, db.Model(ada).Update("Email", "ada@new.example").Error)
		if err := db.Where(envelope.Match("Email", "ada@example.org")).First(&IxUser{}).Error; !errors.Is(err, gorm.ErrRecordNotFound) {
			t.Fatalf("old email still matches: %v", err)
		}
		must(t, db.Where(envelope.Match("Email", "ada@new.example")).First(&got).Error)
		if got.ID != ada.ID {
			t.Fatalf("new email: %+v", got)
		}
		must(t, db.Model(&IxUser{ID: ada.ID}).Updates(map[string]any{"email": "ada@map.example"}).Error)
		must(t, db.Where(envelope.Match("Email", "ada@map.example")).First(&got).Error)
		got.Email = "ada@save.example"
		must(t, db.Save(&got).Error)
		must(t, db.Where(envelope.Match("Email", "ada@save.example")).First(&got).Error)
		must(t, db.Model(&IxUser{ID: ada.ID}).Select("Email").Updates(IxUser{Email: "ada@select.example"}).Error)
		must(t, db.Where(envelope.Match("Email", "ada@select.example")).First(&got).Error)
		must(t, db.Model(&IxUser{ID: ada.ID}).Updates(IxUser{Email: "ada@value.example"}).Error)
		must(t, db.Where(envelope.Match("Email", "ada@value.example")).First(&got).Error)
		if got.ID != ada.ID {
			t.Fatalf("after updates: %+v", got)
		}
	})
}

func TestIndexWrittenOnlyWithSource(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&IxUser{}))
		m := &IxUser{Name: "ada", Email: "ada@example.org"}
		must(t, db.Create(m).Error)
		before, _ := rawColumn(t, db, "ix_users", "email_idx", m.ID)
		for name, run := range map[string]func() error{
			"Update":     func() error { return db.Model(m).Update("email_idx", "1:00").Error },
			"UpdatesMap": func() error { return db.Model(m).Updates(map[string]any{"EmailIdx": "1:00"}).Error },
			"Select":     func() error { return db.Model(m).Select("EmailIdx").Updates(IxUser{EmailIdx: ptr("1:00")}).Error },
			"Omit": func() error {
				return db.Model(m).Omit("EmailIdx").Select("Email", "EmailIdx").Updates(IxUser{Email: "x@example.org"}).Error
			},
			"UpsertLiteral": func() error {
				return db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.Assignments(map[string]any{"email_idx": "1:00"})}).
					Create(&IxUser{ID: m.ID, Email: "ada@example.org"}).Error
			},
		} {
			err := run()
			if !errors.Is(err, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, err)
			}
			after, _ := rawColumn(t, db, "ix_users", "email_idx", m.ID)
			if after != before {
				t.Errorf("%s: index changed from %q to %q", name, before, after)
			}
		}
	})
}

func TestMatchTruncatedExact(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&TaxRecord{}))
		const n = 10000
		recs := make([]TaxRecord, n)
		for i := range recs {
			recs[i] = TaxRecord{UserID: uint(1 + i%3), TaxID: ptr(fmt.Sprintf("TX-%05d", i)), Phone: fmt.Sprintf("+1 (555) %05d", i)}
		}
		must(t, db.CreateInBatches(recs, 1000).Error)
		for _, i := range []int{0, 7, 1234, 5555, n - 1} {
			var got []TaxRecord
			must(t, db.Where(envelope.Match("Phone", fmt.Sprintf("1555%05d", i))).Find(&got).Error)
			if len(got) != 1 || got[0].ID != recs[i].ID {
				t.Fatalf("phone %d: %d rows %+v", i, len(got), got)
			}
			var one TaxRecord
			must(t, db.Where(envelope.Match("Phone", fmt.Sprintf("+1 555 %05d", i))).Take(&one).Error)
			if one.ID != recs[i].ID {
				t.Fatalf("take phone %d: %+v", i, one)
			}
			var c int64
			must(t, db.Model(&TaxRecord{}).Where(envelope.Match("Phone", fmt.Sprintf("1555%05d", i))).Count(&c).Error)
			if c != 1 {
				t.Fatalf("count phone %d: %d", i, c)
			}
			owner := recs[i].UserID
			must(t, db.Where(envelope.MatchOwner(owner, "TaxID", fmt.Sprintf("%05d", i))).Find(&got).Error)
			if len(got) != 1 || got[0].ID != recs[i].ID {
				t.Fatalf("tax %d: %+v", i, got)
			}
			other := owner%3 + 1
			must(t, db.Where(envelope.MatchOwner(other, "TaxID", fmt.Sprintf("%05d", i))).Find(&got).Error)
			if len(got) != 0 {
				t.Fatalf("tax %d found under owner %d: %+v", i, other, got)
			}
		}
		// 8 bits over 10k rows: the index alone gives about 39 rows per value.
		var raw []string
		must(t, db.Table("tax_records").Where("phone_idx = (?)", db.Table("tax_records").Select("phone_idx").Where("id = ?", recs[0].ID)).Pluck("phone_idx", &raw).Error)
		if len(raw) < 10 {
			t.Fatalf("an 8-bit index over %d rows shares %d values: the test shows no false positive", n, len(raw))
		}
	})
}

func TestMatchRefusedWithoutIndex(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&IxUser{}, &Credential{}))
		err := db.Where(envelope.Match("Password", "x")).Find(&[]Credential{}).Error
		if !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("match without index: %v", err)
		}
		err = db.Where(&IxUser{Email: "ada@example.org"}).Find(&[]IxUser{}).Error
		if !errors.Is(err, envelope.ErrUnsafe) || !strings.Contains(err.Error(), "envelope.Match") {
			t.Fatalf("struct condition on an indexed field: %v", err)
		}
	})
}

// IxNote is owned by an IxUser, for preloads and upserts.
type IxNote struct {
	ID      uint
	UserID  uint    `envelope:"owner"`
	Title   string  `gorm:"size:32"`
	Body    *string `gorm:"serializer:envelope"`
	BodyIdx *string `gorm:"size:80;index" envelope:"index:Body;transform:lower"`
}

type IxOwner struct {
	ID    uint
	Notes []IxNote `gorm:"foreignKey:UserID"`
}

func TestIndexUpsertsAndNull(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&IxNote{}))
		n := &IxNote{UserID: 4, Title: "a", Body: ptr("First")}
		must(t, db.Create(n).Error)
		find := func(body string) []IxNote {
			t.Helper()
			var got []IxNote
			must(t, db.Where(envelope.MatchOwner(4, "Body", body)).Find(&got).Error)
			return got
		}
		if got := find("FIRST"); len(got) != 1 || got[0].ID != n.ID {
			t.Fatalf("first: %+v", got)
		}
		// Upsert from the inserted row: the index follows its source.
		must(t, db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.AssignmentColumns([]string{"body"})}).
			Create(&IxNote{ID: n.ID, UserID: 4, Body: ptr("Second")}).Error)
		if got := find("first"); len(got) != 0 {
			t.Fatalf("old body still matches: %+v", got)
		}
		if got := find("second"); len(got) != 1 {
			t.Fatalf("second: %+v", got)
		}
		must(t, db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, UpdateAll: true}).
			Create(&IxNote{ID: n.ID, UserID: 4, Title: "b", Body: ptr("Third")}).Error)
		if got := find("third"); len(got) != 1 {
			t.Fatalf("third: %+v", got)
		}
		// A literal in DO UPDATE cannot carry an index: refused.
		err := db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.Assignments(map[string]any{"body": "fourth"})}).
			Create(&IxNote{ID: n.ID, UserID: 4, Body: ptr("x")}).Error
		if !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("literal upsert: %v", err)
		}
		// A NULL source has a NULL index.
		must(t, db.Model(n).Update("Body", nil).Error)
		idx, ok := rawColumn(t, db, "ix_notes", "body_idx", n.ID)
		if ok {
			t.Fatalf("index of a NULL body: %q", idx)
		}
		if got := find("third"); len(got) != 0 {
			t.Fatalf("NULL body matches: %+v", got)
		}
	})
}

func TestMatchPreloadAndTransaction(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&IxOwner{}, &IxNote{}, &IxUser{}))
		o := &IxOwner{Notes: []IxNote{{Title: "x", Body: ptr("alpha")}, {Title: "y", Body: ptr("beta")}}}
		must(t, db.Create(o).Error)
		var got IxOwner
		must(t, db.Preload("Notes", envelope.MatchOwner(o.ID, "Body", "BETA")).First(&got, o.ID).Error)
		if len(got.Notes) != 1 || *got.Notes[0].Body != "beta" {
			t.Fatalf("preload: %+v", got.Notes)
		}
		err := db.Transaction(func(tx *gorm.DB) error {
			u := &IxUser{Name: "tx", Email: "tx@example.org"}
			if err := tx.Create(u).Error; err != nil {
				return err
			}
			var in IxUser
			if err := tx.Where(envelope.Match("Email", "TX@example.org")).First(&in).Error; err != nil {
				return err
			}
			if in.ID != u.ID {
				return fmt.Errorf("in tx: %+v", in)
			}
			return errors.New("roll back")
		})
		if err == nil || err.Error() != "roll back" {
			t.Fatalf("transaction: %v", err)
		}
		if err := db.Where(envelope.Match("Email", "tx@example.org")).First(&IxUser{}).Error; !errors.Is(err, gorm.ErrRecordNotFound) {
			t.Fatalf("rolled back row found: %v", err)
		}
		// A chain holding a Match can be run again.
		q := db.Model(&IxNote{}).Where(envelope.MatchOwner(o.ID, "Body", "alpha"))
		for i := 0; i < 2; i++ {
			var c int64
			must(t, q.Count(&c).Error)
			if c != 1 {
				t.Fatalf("run %d: count %d", i, c)
			}
		}
		// Delete by match.
		must(t, db.Where(envelope.MatchOwner(o.ID, "Body", "alpha")).Delete(&IxNote{}).Error)
		var left int64
		must(t, db.Model(&IxNote{}).Count(&left).Error)
		if left != 1 {
			t.Fatalf("after delete: %d notes", left)
		}
		// Without the plugin the condition fails the statement.
		plain, err := gorm.Open(db.Dialector, &gorm.Config{})
		must(t, err)
		if err := plain.Where(envelope.Match("Email", "x")).Find(&[]IxUser{}).Error; !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("without plugin: %v", err)
		}
	})
}

func TestShredClearsGlobalIndexes(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t), envelope.Config{Models: []any{&IxUser{}, &TaxRecord{}}})
		must(t, db.AutoMigrate(&IxUser{}, &TaxRecord{}))
		u := &IxUser{Name: "gone", Email: "gone@example.org"}
		keep := &IxUser{Name: "kept", Email: "kept@example.org"}
		must(t, db.Create(u).Error)
		must(t, db.Create(keep).Error)
		// A model the process has not used yet, known from Config.Models.
		must(t, db.Exec("INSERT INTO tax_records (user_id, phone_idx) VALUES (?, '1:ab'), (?, '1:cd')", u.ID, keep.ID).Error)
		must(t, envelope.Shred(db, u.ID))
		if idx, ok := rawColumn(t, db, "ix_users", "email_idx", u.ID); ok {
			t.Fatalf("shredded owner's index kept: %q", idx)
		}
		if idx, ok := rawColumn(t, db, "ix_users", "email_idx", keep.ID); !ok || idx == "" {
			t.Fatalf("other owner's index cleared")
		}
		var phones []string
		must(t, db.Table("tax_records").Order("user_id").Pluck("phone_idx", &phones).Error)
		if len(phones) != 2 || phones[0] != "" || phones[1] != "1:cd" {
			t.Fatalf("tax_records phone_idx after shred: %q", phones)
		}
		if err := db.Where(envelope.Match("Email", "gone@example.org")).First(&IxUser{}).Error; !errors.Is(err, gorm.ErrRecordNotFound) {
			t.Fatalf("shredded owner found: %v", err)
		}
	})
}

// A global index key first needed inside a transaction that has already
// written (SQLite's one writer is then that transaction).
func TestIndexKeyCreatedInsideWritingTransaction(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&Credential{}, &IxUser{}))
		for _, commit := range []bool{false, true} {
			err := db.Transaction(func(tx *gorm.DB) error {
				if err := tx.Create(&Credential{UserID: 9, Password: "pw"}).Error; err != nil {
					return err
				}
				if err := tx.Create(&IxUser{Name: "in", Email: "in@example.org"}).Error; err != nil {
					return err
				}
				var u IxUser
				if err := tx.Where(envelope.Match("Email", "in@example.org")).First(&u).Error; err != nil {
					return err
				}
				if !commit {
					return errors.New("roll back")
				}
				return nil
			})
			if commit {
				must(t, err)
			} else if err == nil || err.Error() != "roll back" {
				t.Fatalf("first transaction: %v", err)
			}
		}
		var u IxUser
		must(t, db.Where(envelope.Match("Email", "in@example.org")).First(&u).Error)
	})
}

func TestPlanIndex(t *testing.T) {
	p, err := envelope.PlanIndex(10000, 10000)
	must(t, err)
	if p.Bits < p.MinBits || p.Bits > p.MaxBits || p.Bits < 7 || p.Bits > 12 {
		t.Fatalf("10k rows, 10k values: %+v", p)
	}
	if _, err := envelope.PlanIndex(0, 0); err == nil {
		t.Fatal("no rows: no error")
	}
}

// Concurrent first writers on two instances create one global index key,
// and every row they wrote matches.
func TestIndexKeyConcurrentFirstWriters(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		must(t, db.AutoMigrate(&IxUser{}))
		a := startInstance(t, db, "a", keys, envelope.Config{})
		b := startInstance(t, db, "b", keys, envelope.Config{})
		const workers = 8
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for w := range workers {
			h := a.db
			if w%2 == 1 {
				h = b.db
			}
			wg.Go(func() {
				errs[w] = h.Create(&IxUser{Name: "w", Email: fmt.Sprintf("w%d@example.org", w)}).Error
			})
		}
		wg.Wait()
		for w, err := range errs {
			if err != nil && !(errors.Is(err, envelope.ErrConflict) && db.Dialector.Name() == "sqlite") {
				t.Fatalf("writer %d: %v", w, err)
			}
		}
		var n int64
		must(t, db.Table("envelope_index_keys").Count(&n).Error)
		if n != 1 {
			t.Fatalf("%d index keys, want 1", n)
		}
		for w, err := range errs {
			if err != nil {
				continue
			}
			for _, h := range []*gorm.DB{a.db, b.db, db} {
				var u IxUser
				must(t, h.Where(envelope.Match("Email", fmt.Sprintf("w%d@example.org", w))).First(&u).Error)
			}
		}
	})
}

// Master-key rotation rewraps the global index keys: every index value
// stays byte for byte, and matches under the new keyring alone.
func TestRotationKeepsIndexValues(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		oldKey, _ := newKeyText(t)
		newKey, _ := newKeyText(t)
		setup(t, db, mustKeyring(t, oldKey))
		must(t, db.AutoMigrate(&IxUser{}, &TaxRecord{}))
		for i := 0; i < 20; i++ {
			must(t, db.Create(&IxUser{Name: "r", Email: fmt.Sprintf("r%d@example.org", i)}).Error)
			must(t, db.Create(&TaxRecord{UserID: uint(1 + i%4), TaxID: ptr(fmt.Sprint(i)), Phone: fmt.Sprint(5550000 + i)}).Error)
		}
		snapshot := func() []string {
			var a, b, c []string
			must(t, db.Table("ix_users").Order("id").Pluck("email_idx", &a).Error)
			must(t, db.Table("tax_records").Order("id").Pluck("phone_idx", &b).Error)
			must(t, db.Table("tax_records").Order("id").Pluck("tax_idx", &c).Error)
			return append(append(a, b...), c...)
		}
		before := snapshot()
		res, err := rotate.Run(context.Background(), db, rotate.Options{Keys: mustKeyring(t, newKey, oldKey), Profile: &Profile{}})
		must(t, err)
		if res.IndexKeys != 2 {
			t.Fatalf("rotation: %+v, want 2 index keys rewrapped", res)
		}
		if after := snapshot(); !slices.Equal(before, after) {
			t.Fatalf("index values changed by the rotation")
		}
		fresh := testdb.Reopen(t, db)
		must(t, fresh.Use(envelope.New(envelope.Config{Keys: mustKeyring(t, newKey), Profile: &Profile{}})))
		var u IxUser
		must(t, fresh.Where(envelope.Match("Email", "r7@example.org")).First(&u).Error)
		var recs []TaxRecord
		must(t, fresh.Where(envelope.Match("Phone", "5550011")).Find(&recs).Error)
		if len(recs) != 1 || recs[0].Phone != "5550011" {
			t.Fatalf("after rotation: %+v", recs)
		}
	})
}

// An Update or Delete by a truncated index touches exactly the matching
// rows, never a row that only shares the index value.
func TestMatchTruncatedWritesExact(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&TaxRecord{}))
		const n = 1000
		recs := make([]TaxRecord, n)
		for i := range recs {
			recs[i] = TaxRecord{UserID: 1, TaxID: ptr(fmt.Sprint(i)), Phone: fmt.Sprint(i)}
		}
		must(t, db.CreateInBatches(recs, 500).Error)
		// 8 bits over 1000 values: about 4 rows share phone 7's index value.
		res := db.Model(&TaxRecord{UserID: 1}).Where(envelope.Match("Phone", "7")).Update("TaxID", "seven")
		must(t, res.Error)
		if res.RowsAffected != 1 {
			t.Fatalf("update by match touched %d rows", res.RowsAffected)
		}
		var seven []TaxRecord
		must(t, db.Where(envelope.MatchOwner(1, "TaxID", "seven")).Find(&seven).Error)
		if len(seven) != 1 || seven[0].Phone != "7" {
			t.Fatalf("after the update: %+v", seven)
		}
		res = db.Where(envelope.Match("Phone", "8")).Delete(&TaxRecord{})
		must(t, res.Error)
		if res.RowsAffected != 1 {
			t.Fatalf("delete by match removed %d rows", res.RowsAffected)
		}
		var left int64
		must(t, db.Model(&TaxRecord{}).Count(&left).Error)
		if left != n-1 {
			t.Fatalf("%d rows left", left)
		}
	})
}

// A query that does not read the indexed field still gets exactly the
// matching rows.
func TestMatchWithoutReadingTheField(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&TaxRecord{}, &IxUser{}))
		recs := make([]TaxRecord, 1000)
		for i := range recs {
			recs[i] = TaxRecord{UserID: 1, Phone: fmt.Sprint(i)}
		}
		must(t, db.CreateInBatches(recs, 500).Error)
		var got []TaxRecord
		must(t, db.Select("id", "user_id").Where(envelope.Match("Phone", "7")).Find(&got).Error)
		if len(got) != 1 || got[0].ID != recs[7].ID {
			t.Fatalf("Select without the field: %+v", got)
		}
		must(t, db.Omit("phone").Where(envelope.Match("Phone", "9")).Find(&got).Error)
		if len(got) != 1 || got[0].ID != recs[9].ID {
			t.Fatalf("Omit of the field: %+v", got)
		}
		u := &IxUser{Name: "sel", Email: "sel@example.org"}
		must(t, db.Create(u).Error)
		var us []IxUser
		must(t, db.Select("id", "name").Where(envelope.Match("Email", "sel@example.org")).Find(&us).Error)
		if len(us) != 1 || us[0].ID != u.ID {
			t.Fatalf("full-length, Select without the field: %+v", us)
		}
	})
}
