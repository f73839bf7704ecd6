package envelope_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Device has a unique column that does not determine the owner.
type Device struct {
	ID     uint
	Serial string `gorm:"uniqueIndex;size:64"`
	UserID uint   `envelope:"owner"`
	Secret string `gorm:"serializer:envelope"`
	Note   string
}

// Token has a unique key that contains the owner.
type Token struct {
	ID     uint
	UserID uint   `gorm:"uniqueIndex:idx_token_owner_name" envelope:"owner"`
	Name   string `gorm:"uniqueIndex:idx_token_owner_name;size:64"`
	Value  string `gorm:"serializer:envelope"`
}

// readable reports every Device row's decryption error, by id.
func allDevices(t *testing.T, db *gorm.DB) map[uint]Device {
	t.Helper()
	var ds []Device
	if err := db.Order("id").Find(&ds).Error; err != nil {
		t.Fatalf("read devices: %v", err)
	}
	out := map[uint]Device{}
	for _, d := range ds {
		out[d.ID] = d
	}
	return out
}

func wantUnsafe(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, envelope.ErrUnsafe) {
		t.Fatalf("%s: got %v, want ErrUnsafe", what, err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: error is not one line: %q", what, err)
	}
}

// Item 1: an upsert whose conflict target does not determine the owner
// is refused before any SQL is sent; forms that keep every row under its
// owner are carried out.
func TestUpsertConflictTarget(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&Device{}, &Token{}))
		must(t, db.Create(&Device{Serial: "SN-1", UserID: 1, Secret: "owner-1-secret"}).Error)
		serial := []clause.Column{{Name: "serial"}}

		refused := map[string]*gorm.DB{
			"AssignmentColumns": db.Clauses(clause.OnConflict{Columns: serial, DoUpdates: clause.AssignmentColumns([]string{"secret"})}),
			"Assignments":       db.Clauses(clause.OnConflict{Columns: serial, DoUpdates: clause.Assignments(map[string]any{"secret": "literal"})}),
			"OwnerOnly":         db.Clauses(clause.OnConflict{Columns: serial, DoUpdates: clause.AssignmentColumns([]string{"user_id"})}),
			"OwnerLiteral":      db.Clauses(clause.OnConflict{Columns: serial, DoUpdates: clause.Assignments(map[string]any{"user_id": 2, "secret": "x"})}),
			"OnConstraint":      db.Clauses(clause.OnConflict{OnConstraint: "idx_devices_serial", DoUpdates: clause.AssignmentColumns([]string{"secret"})}),
		}
		if testdb.DialectOf(db) == testdb.MySQL {
			// MySQL updates on any unique key, whatever the target says.
			refused["TargetIgnored"] = db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "user_id"}}, DoUpdates: clause.AssignmentColumns([]string{"secret"})})
		}
		for name, q := range refused {
			log := newSQLLog()
			err := q.Session(&gorm.Session{Logger: log}).Create(&Device{Serial: "SN-1", UserID: 2, Secret: "owner-2-secret"}).Error
			wantUnsafe(t, name, err)
			if n := log.count("INSERT"); n != 0 {
				t.Errorf("%s: %d INSERT statements sent", name, n)
			}
		}
		got := allDevices(t, db)
		if len(got) != 1 || got[1].Secret != "owner-1-secret" || got[1].UserID != 1 {
			t.Fatalf("after refused upserts: %+v", got)
		}

		// UpdateAll rewrites the conflicting row whole: it becomes owner 2's,
		// every encrypted value sealed for owner 2.
		must(t, db.Clauses(clause.OnConflict{Columns: serial, UpdateAll: true}).
			Create(&Device{Serial: "SN-1", UserID: 2, Secret: "owner-2-secret"}).Error)
		got = allDevices(t, db)
		if got[1].UserID != 2 || got[1].Secret != "owner-2-secret" {
			t.Fatalf("UpdateAll: %+v", got[1])
		}
		// So does assigning the owner and every encrypted column.
		must(t, db.Clauses(clause.OnConflict{Columns: serial, DoUpdates: clause.AssignmentColumns([]string{"user_id", "secret", "note"})}).
			Create(&Device{Serial: "SN-1", UserID: 3, Secret: "owner-3-secret", Note: "n"}).Error)
		got = allDevices(t, db)
		if got[1].UserID != 3 || got[1].Secret != "owner-3-secret" {
			t.Fatalf("owner and secret from the inserted row: %+v", got[1])
		}
		// Plain columns only: nothing encrypted moves.
		must(t, db.Clauses(clause.OnConflict{Columns: serial, DoUpdates: clause.AssignmentColumns([]string{"note"})}).
			Create(&Device{Serial: "SN-1", UserID: 4, Secret: "ignored", Note: "plain"}).Error)
		got = allDevices(t, db)
		if got[1].UserID != 3 || got[1].Secret != "owner-3-secret" || got[1].Note != "plain" {
			t.Fatalf("plain DoUpdates: %+v", got[1])
		}

		// A target that contains the owner determines it: partial updates of
		// encrypted columns, by the inserted value or a literal, are fine.
		must(t, db.Create(&Token{UserID: 5, Name: "t", Value: "v1"}).Error)
		target := []clause.Column{{Name: "user_id"}, {Name: "name"}}
		if testdb.DialectOf(db) == testdb.MySQL {
			target = nil // MySQL takes its keys from the table
		}
		must(t, db.Clauses(clause.OnConflict{Columns: target, DoUpdates: clause.AssignmentColumns([]string{"value"})}).
			Create(&Token{UserID: 5, Name: "t", Value: "v2"}).Error)
		must(t, db.Clauses(clause.OnConflict{Columns: target, DoUpdates: clause.Assignments(map[string]any{"value": "v3"})}).
			Create(&Token{UserID: 5, Name: "t", Value: "ignored"}).Error)
		var tok Token
		must(t, db.First(&tok, "name = ?", "t").Error)
		if tok.Value != "v3" || tok.UserID != 5 {
			t.Fatalf("token: %+v", tok)
		}
	})
}

// Item 2 and 3: a partial update that moves or clears the owner of a row
// without its owner loaded is refused and writes nothing.
func TestOwnerMoveRefused(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Facility: "f", Password: "p1", APIKey: ptr("k1"), Blob: []byte("b1")}
		must(t, db.Create(c).Error)
		byID := db.Model(&Credential{}).Where("id = ?", c.ID)
		cases := map[string]func() error{
			"UpdatesMapMove": func() error {
				return byID.Session(&gorm.Session{}).Updates(map[string]any{"user_id": 2, "password": "p"}).Error
			},
			"UpdateMove":         func() error { return byID.Session(&gorm.Session{}).Update("user_id", 2).Error },
			"UpdateColumnMove":   func() error { return byID.Session(&gorm.Session{}).UpdateColumn("user_id", 2).Error },
			"UpdatesStructMove":  func() error { return byID.Session(&gorm.Session{}).Updates(Credential{UserID: 2}).Error },
			"UpdateNil":          func() error { return byID.Session(&gorm.Session{}).Update("user_id", nil).Error },
			"UpdateZero":         func() error { return byID.Session(&gorm.Session{}).Update("user_id", 0).Error },
			"UpdateExpr":         func() error { return byID.Session(&gorm.Session{}).Update("user_id", gorm.Expr("user_id + 1")).Error },
			"LoadedMove":         func() error { return db.Model(&Credential{ID: c.ID, UserID: 1}).Update("user_id", 2).Error },
			"LoadedMoveInMemory": func() error { x := *c; x.UserID = 2; return db.Model(&x).Updates(map[string]any{"user_id": 1}).Error },
			"SaveOmitPassword":   func() error { x := *c; x.UserID = 2; return db.Omit("password").Save(&x).Error },
			"AllButOneEncrypted": func() error {
				return byID.Session(&gorm.Session{}).Updates(map[string]any{"user_id": 2, "password": "p", "api_key": "k"}).Error
			},
			"UpdatesMapPtrMove": func() error {
				m := map[string]any{"user_id": 2}
				return byID.Session(&gorm.Session{}).Updates(&m).Error
			},
			"UpdatesMapFieldName": func() error { return byID.Session(&gorm.Session{}).Updates(map[string]any{"UserID": 2}).Error },
		}
		for name, f := range cases {
			err := f()
			wantUnsafe(t, name, err)
			var got Credential
			must(t, db.First(&got, c.ID).Error)
			if got.UserID != 1 || got.Password != "p1" || *got.APIKey != "k1" || string(got.Blob) != "b1" {
				t.Fatalf("%s: row changed: %+v", name, got)
			}
		}
	})
}

// What stays allowed: rewriting the owner with every encrypted field,
// Save of the full row, and assigning the owner the row already has.
func TestOwnerMoveCarriedOut(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Facility: "f", Password: "p1", APIKey: ptr("k1"), Blob: []byte("b1")}
		must(t, db.Create(c).Error)
		read := func() Credential {
			t.Helper()
			var got Credential
			must(t, db.First(&got, c.ID).Error)
			return got
		}
		// Every encrypted column rewritten: the row is re-keyed for owner 2.
		must(t, db.Model(&Credential{}).Where("id = ?", c.ID).
			Updates(map[string]any{"user_id": 2, "password": "p2", "api_key": nil, "blob": []byte("b2")}).Error)
		if got := read(); got.UserID != 2 || got.Password != "p2" || got.APIKey != nil || string(got.Blob) != "b2" {
			t.Fatalf("full map move: %+v", got)
		}
		// Save of the full row moves it.
		x := read()
		x.UserID = 3
		must(t, db.Save(&x).Error)
		if got := read(); got.UserID != 3 || got.Password != "p2" || string(got.Blob) != "b2" {
			t.Fatalf("Save move: %+v", got)
		}
		// The loaded owner, assigned again, with a plain column.
		must(t, db.Model(&x).Updates(map[string]any{"user_id": 3, "facility": "g"}).Error)
		must(t, db.Model(&x).Updates(&Credential{UserID: 3, Facility: "h"}).Error)
		if got := read(); got.UserID != 3 || got.Facility != "h" || got.Password != "p2" {
			t.Fatalf("same owner: %+v", got)
		}
		// Clearing the owner along with every encrypted value leaves nothing
		// encrypted behind.
		must(t, db.Model(&Credential{}).Where("id = ?", c.ID).
			Updates(map[string]any{"user_id": nil, "password": nil, "api_key": nil, "blob": nil}).Error)
	})
}

// A partial update seals its values under the owner of the model it is
// given, and touches only rows stored under that owner: a stale model
// never seals a value for the wrong owner, and is told so.
func TestPartialUpdatePinnedToOwner(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Password: "p1"}
		must(t, db.Create(c).Error)
		stale := &Credential{ID: c.ID, UserID: 2}
		res := db.Model(stale).Update("password", "sealed-for-2")
		wantUnsafe(t, "stale model", res.Error)
		if res.RowsAffected != 0 {
			t.Fatalf("stale model updated %d rows", res.RowsAffected)
		}
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.Password != "p1" || got.UserID != 1 {
			t.Fatalf("row: %+v", got)
		}
		// With the right owner it is updated.
		must(t, db.Model(&Credential{ID: c.ID, UserID: 1}).Update("password", "p2").Error)
		must(t, db.First(&got, c.ID).Error)
		if got.Password != "p2" {
			t.Fatalf("row: %+v", got)
		}
		// A model moved in memory and written back field by field is the
		// same: the row stays as it is stored.
		moved := got
		moved.UserID, moved.Password, moved.APIKey = 2, "", nil
		moved.Blob = []byte("sealed-for-2")
		res = db.Updates(&moved)
		wantUnsafe(t, "moved model", res.Error)
		if res.RowsAffected != 0 {
			t.Fatalf("moved model updated %d rows", res.RowsAffected)
		}
		must(t, db.First(&got, c.ID).Error)
		if got.UserID != 1 || got.Password != "p2" || got.Blob != nil {
			t.Fatalf("row: %+v", got)
		}
		// GORM still refuses an update with no condition at all.
		err := db.Model(&Credential{UserID: 1}).Update("password", "all").Error
		if !errors.Is(err, gorm.ErrMissingWhereClause) {
			t.Fatalf("global update: got %v, want gorm.ErrMissingWhereClause", err)
		}
	})
}

// UserWithCreds owns credentials through GORM's has-many association; the
// foreign key is the credentials' owner.
type UserWithCreds struct {
	ID          uint
	Name        string
	Credentials []Credential `gorm:"foreignKey:UserID"`
}

// Item 3: GORM's association helpers null the foreign key of has-many
// rows; where that key is the owner they are refused and change nothing.
// Unscoped() deletes the rows instead, which is allowed.
func TestAssociationClearRefused(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&UserWithCreds{}))
		u := &UserWithCreds{Name: "u", Credentials: []Credential{{Password: "a"}, {Password: "b"}}}
		must(t, db.Create(u).Error)
		count := func() int {
			t.Helper()
			var cs []Credential
			must(t, db.Where("user_id = ?", u.ID).Find(&cs).Error)
			for _, c := range cs {
				if c.Password != "a" && c.Password != "b" {
					t.Fatalf("credential %d: %q", c.ID, c.Password)
				}
			}
			return len(cs)
		}
		first := u.Credentials[0]
		wantUnsafe(t, "Clear", db.Model(u).Association("Credentials").Clear())
		wantUnsafe(t, "Delete", db.Model(u).Association("Credentials").Delete(&first))
		wantUnsafe(t, "Replace", db.Model(u).Association("Credentials").Replace(&Credential{Password: "c"}))
		if n := count(); n != 2 {
			t.Fatalf("after refused helpers: %d credentials", n)
		}
		// Append of a new row is an insert under the parent's id. (A refused
		// Replace leaves its rows in u.Credentials: start from a fresh u.)
		u = &UserWithCreds{ID: u.ID}
		must(t, db.Model(u).Association("Credentials").Append(&Credential{Password: "a"}))
		if n := count(); n != 3 {
			t.Fatalf("after Append: %d credentials", n)
		}
		// The working alternative: delete the rows.
		must(t, db.Model(u).Association("Credentials").Unscoped().Clear())
		if n := count(); n != 0 {
			t.Fatalf("after Unscoped Clear: %d credentials", n)
		}
	})
}

// Item 10: Omit or Select on Create keeps an encrypted column out of the
// insert, and then it needs no owner.
func TestCreateOmitEncrypted(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{Facility: "no-owner", Password: "not-written"}
		must(t, db.Omit("Password").Create(c).Error)
		c2 := &Credential{Facility: "no-owner-2", Password: "not-written"}
		must(t, db.Select("Facility").Create(c2).Error)
		for _, id := range []uint{c.ID, c2.ID} {
			if v, ok := rawColumn(t, db, "credentials", "password", id); ok && v != "" {
				t.Fatalf("row %d: password stored %q", id, v)
			}
		}
		// Selecting it demands the owner again.
		err := db.Select("Facility", "Password").Create(&Credential{Password: "x"}).Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("selected: got %v, want ErrNoOwner", err)
		}
	})
}

// Item 5: a *gorm.DB without the plugin refuses encrypted writes, and no
// error or log line holds the plaintext, on every driver (pgx prints a
// failed argument with %#v, GORM's serializer wrapper included).
func TestNoPlaintextWithoutPlugin(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		log := newSQLLog()
		other := testdb.Reopen(t, db, testdb.Options{Logger: log})
		const secret = "plaintext-that-must-not-leak"
		ops := map[string]func() error{
			"Create":  func() error { return other.Create(&Credential{UserID: 1, Password: secret}).Error },
			"Bytes":   func() error { return other.Create(&Credential{UserID: 1, Blob: []byte(secret)}).Error },
			"Pointer": func() error { return other.Create(&Credential{UserID: 1, APIKey: ptr(secret)}).Error },
			"Updates": func() error {
				return other.Model(&Credential{ID: 1, UserID: 1}).Updates(Credential{Password: secret}).Error
			},
			"Where": func() error { var c []Credential; return other.Where(&Credential{Password: secret}).Find(&c).Error },
		}
		for name, op := range ops {
			err := op()
			if err == nil {
				if name == "Where" {
					continue // a query that matched nothing wrote nothing
				}
				t.Fatalf("%s: succeeded without the plugin", name)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), hexOf(secret)) {
				t.Fatalf("%s: plaintext in error: %v", name, err)
			}
			if testdb.DialectOf(db) != testdb.Postgres && name != "Where" && !strings.Contains(err.Error(), "envelope plugin") {
				t.Errorf("%s: error does not say why: %v", name, err)
			}
		}
		if s := log.String(); strings.Contains(s, secret) || strings.Contains(s, hexOf(secret)) {
			t.Fatalf("plaintext in GORM's log:\n%s", s)
		}
		var n int64
		must(t, db.Model(&Credential{}).Count(&n).Error)
		if n != 0 {
			t.Fatalf("%d rows written without the plugin", n)
		}
	})
}

// hexOf is how %#v prints the first bytes of s as a []byte.
func hexOf(s string) string {
	v := fmt.Sprintf("%#v", []byte(s[:4]))
	return strings.TrimSuffix(strings.TrimPrefix(v, "[]byte{"), "}")
}

// Found by the differential test: in a Create of several rows, a row with
// a zero owner took another row's owner for its values and was stored
// with none, unreadable. Each row's owner is its own.
func TestCreateRowWithoutOwnerInSlice(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		rows := []Credential{{Password: "no-owner"}, {UserID: 7, Password: "owned"}}
		err := db.CreateInBatches(&rows, 3).Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("got %v, want ErrNoOwner", err)
		}
		// The statement's model names no row's owner either.
		err = db.Model(&Credential{UserID: 5}).Create(map[string]any{"Password": "x"}).Error
		if !errors.Is(err, envelope.ErrNoOwner) {
			t.Fatalf("map create: got %v, want ErrNoOwner", err)
		}
		var n int64
		must(t, db.Model(&Credential{}).Count(&n).Error)
		if n != 0 {
			t.Fatalf("%d rows written", n)
		}
	})
}

// An upsert on the primary key of rows that set their ids is carried out
// when every row it would update already has the inserted row's owner
// (Save of a parent with its loaded children: GORM upserts them, setting
// their foreign key), and refused when one has another owner.
func TestUpsertOnIDKeepsOwner(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&UserWithCreds{}))
		u := &UserWithCreds{Name: "u", Credentials: []Credential{{Password: "a"}, {Password: "b"}}}
		must(t, db.Create(u).Error)
		var loaded UserWithCreds
		must(t, db.Preload("Credentials").First(&loaded, u.ID).Error)
		loaded.Name = "renamed"
		loaded.Credentials[0].Facility = "kept"
		must(t, db.Save(&loaded).Error)
		var got []Credential
		must(t, db.Where("user_id = ?", u.ID).Order("id").Find(&got).Error)
		if len(got) != 2 || got[0].Password != "a" || got[1].Password != "b" {
			t.Fatalf("after Save: %+v", got)
		}
		// The same upsert of a row that belongs to another owner is refused.
		other := &Credential{UserID: 99, Password: "other"}
		must(t, db.Create(other).Error)
		loaded.Credentials = append(loaded.Credentials, Credential{ID: other.ID, UserID: 99, Password: "other"})
		wantUnsafe(t, "Save moving another owner's row", db.Save(&loaded).Error)
		wantUnsafe(t, "upsert on id", db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.AssignmentColumns([]string{"user_id", "password"})}).
			Create(&Credential{ID: other.ID, UserID: 98, Password: "moved"}).Error)
		must(t, db.First(other, other.ID).Error)
		if other.UserID != 99 || other.Password != "other" {
			t.Fatalf("other owner's row: %+v", other)
		}
		// An upsert of the owner's own row on its id goes through.
		must(t, db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.AssignmentColumns([]string{"password"})}).
			Create(&Credential{ID: other.ID, UserID: 99, Password: "updated"}).Error)
		must(t, db.First(other, other.ID).Error)
		if other.Password != "updated" {
			t.Fatalf("own row: %+v", other)
		}
	})
}

// Found by the differential test: a stale model's pinned update that only
// clears an encrypted field (no token to write) was a silent no-op, and a
// refused stale update left the DEK it created for the model's owner.
func TestStalePinnedUpdateLeavesNothing(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 1, Password: "p1", APIKey: ptr("k")}
		must(t, db.Create(c).Error)
		wantUnsafe(t, "clear through a stale model", db.Model(&Credential{ID: c.ID, UserID: 2}).Update("api_key", nil).Error)
		wantUnsafe(t, "map through a stale model", db.Model(&Credential{ID: c.ID, UserID: 3}).Updates(map[string]any{"password": "x"}).Error)
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.APIKey == nil || *got.APIKey != "k" || got.Password != "p1" {
			t.Fatalf("row changed: %+v", got)
		}
		var n int64
		must(t, db.Model(&Profile{}).Where("user_id IN ?", []uint{2, 3}).Count(&n).Error)
		if n != 0 {
			t.Fatalf("%d profiles created by refused updates", n)
		}
		// The model's own owner, clearing a field, is fine.
		must(t, db.Model(&Credential{ID: c.ID, UserID: 1}).Update("api_key", nil).Error)
	})
}
