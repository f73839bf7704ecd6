package envelope_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// The bound format (Config.Format = FormatBound): what a value is bound
// to, proven by moving stored values the way someone with write access to
// the database would, on every database.

// CredentialArchive is another table with Credential's columns.
type CredentialArchive struct {
	ID       uint
	UserID   uint    `envelope:"owner"`
	Password string  `gorm:"serializer:envelope"`
	APIKey   *string `gorm:"serializer:envelope"`
}

// BoundNote binds its values to their row: ids are set by the app.
type BoundNote struct {
	ID     string  `gorm:"primaryKey;size:64" envelope:"row"`
	UserID uint    `envelope:"owner"`
	Slug   string  `gorm:"uniqueIndex;size:64"`
	Title  string  `gorm:"serializer:envelope"`
	Body   *string `gorm:"serializer:envelope"`
}

func setupBound(t testing.TB, db *gorm.DB, cfg ...envelope.Config) *envelope.Plugin {
	t.Helper()
	c := envelope.Config{}
	if len(cfg) > 0 {
		c = cfg[0]
	}
	c.Format = envelope.FormatBound
	p := setup(t, db, newKeys(t), c)
	must(t, db.AutoMigrate(&CredentialArchive{}, &BoundNote{}))
	return p
}

// setRaw writes a column with plain SQL.
func setRaw(t testing.TB, db *gorm.DB, table, col string, id any, v any) {
	t.Helper()
	rawExec(t, db, "UPDATE "+q(db, table)+" SET "+q(db, col)+" = ? WHERE id = ?", v, id)
}

// getRaw reads a column with plain SQL ("" for NULL).
func getRaw(t testing.TB, db *gorm.DB, table, col string, id any) string {
	t.Helper()
	var v *string
	if err := rawDB(db).Raw("SELECT "+q(db, col)+" FROM "+q(db, table)+" WHERE id = ?", id).Row().Scan(&v); err != nil {
		t.Fatalf("raw %s.%s: %v", table, col, err)
	}
	if v == nil {
		return ""
	}
	return *v
}

// wantDecryptFail reads the credential and wants ErrDecrypt, no panic, and
// the password zero.
func wantDecryptFail(t *testing.T, db *gorm.DB, what string, id uint) {
	t.Helper()
	c, err, p := readCredential(db, id)
	if p != nil || !errors.Is(err, envelope.ErrDecrypt) || c.Password != "" {
		t.Fatalf("%s: got %q, %v, panic %v; want \"\", ErrDecrypt", what, c.Password, err, p)
	}
}

func TestBoundValuesStored(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setupBound(t, db)
		c := &Credential{UserID: 1, Password: "hunter2", APIKey: ptr("k-1"), Blob: []byte("blob-1")}
		must(t, db.Create(c).Error)
		for _, col := range []string{"password", "api_key", "blob"} {
			s := getRaw(t, db, "credentials", col, c.ID)
			if !bound.IsBound([]byte(s)) {
				t.Fatalf("%s stored %q, want a bound value", col, s)
			}
		}
		// 32 bytes: 82 characters, against a Fernet token's 140.
		long := "0123456789abcdef0123456789abcdef"
		must(t, db.Model(c).Update("password", long).Error)
		if n := len(getRaw(t, db, "credentials", "password", c.ID)); n != 82 {
			t.Fatalf("32-byte value stored in %d characters, want 82", n)
		}
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.Password != long || *got.APIKey != "k-1" || string(got.Blob) != "blob-1" {
			t.Fatalf("read %q %q %q", got.Password, *got.APIKey, got.Blob)
		}
	})
}

// Every move of a stored value fails with ErrDecrypt: another column of
// the row, another table, another owner, another owner together with that
// owner's DEK; and with row binding, another row of the same owner.
func TestBoundSwapsFail(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setupBound(t, db, envelope.Config{CacheSize: -1})
		a1 := &Credential{UserID: 1, Password: "a1-password", APIKey: ptr("a1-key")}
		a2 := &Credential{UserID: 1, Password: "a2-password", APIKey: ptr("a2-key")}
		b1 := &Credential{UserID: 2, Password: "b1-password", APIKey: ptr("b1-key")}
		must(t, db.Create(a1).Error)
		must(t, db.Create(a2).Error)
		must(t, db.Create(b1).Error)
		arch := &CredentialArchive{UserID: 1, Password: "archived-password"}
		must(t, db.Create(arch).Error)
		pw := getRaw(t, db, "credentials", "password", a1.ID)
		restore := func() { setRaw(t, db, "credentials", "password", a1.ID, pw) }

		setRaw(t, db, "credentials", "password", a1.ID, getRaw(t, db, "credentials", "api_key", a1.ID))
		wantDecryptFail(t, db, "another column of the row", a1.ID)
		restore()

		setRaw(t, db, "credentials", "password", a1.ID, getRaw(t, db, "credential_archives", "password", arch.ID))
		wantDecryptFail(t, db, "the same column of another table", a1.ID)
		restore()

		setRaw(t, db, "credentials", "password", a1.ID, getRaw(t, db, "credentials", "password", b1.ID))
		wantDecryptFail(t, db, "another owner's value", a1.ID)
		restore()

		// Owner 2's DEK and value copied into owner 1's profile and row.
		dek1 := rawDEK(t, db, 1)
		rawExec(t, db, "UPDATE profiles SET encrypted_dek = ? WHERE user_id = 1", rawDEK(t, db, 2))
		setRaw(t, db, "credentials", "password", a1.ID, getRaw(t, db, "credentials", "password", b1.ID))
		wantDecryptFail(t, db, "another owner's DEK and value", a1.ID)
		rawExec(t, db, "UPDATE profiles SET encrypted_dek = ? WHERE user_id = 1", dek1)
		restore()

		c, err, _ := readCredential(db, a1.ID)
		if err != nil || c.Password != "a1-password" {
			t.Fatalf("after the moves were undone: %q, %v", c.Password, err)
		}

		// Without row binding a value moves between rows of one owner
		// (the documented limit of the bound format without envelope:"row").
		setRaw(t, db, "credentials", "password", a1.ID, getRaw(t, db, "credentials", "password", a2.ID))
		if c, err, _ := readCredential(db, a1.ID); err != nil || c.Password != "a2-password" {
			t.Fatalf("row move without row binding: got %q, %v, want the other row's value", c.Password, err)
		}
		restore()

		// With it, it does not.
		n1 := &BoundNote{ID: "note-1", UserID: 1, Slug: "one", Title: "first", Body: ptr("body one")}
		n2 := &BoundNote{ID: "note-2", UserID: 1, Slug: "two", Title: "second", Body: ptr("body two")}
		must(t, db.Create(n1).Error)
		must(t, db.Create(n2).Error)
		setRaw(t, db, "bound_notes", "title", "note-1", getRaw(t, db, "bound_notes", "title", "note-2"))
		var got BoundNote
		err = db.First(&got, "id = ?", "note-1").Error
		if !errors.Is(err, envelope.ErrDecrypt) || got.Title != "" || got.Body == nil || *got.Body != "body one" {
			t.Fatalf("row move with row binding: got %q / %v, %v; want ErrDecrypt with the other field intact", got.Title, got.Body, err)
		}
	})
}

// Every single-byte change of a stored bound value, and every truncation,
// fails with ErrDecrypt and leaves the field zero.
func TestBoundTamperingFails(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setupBound(t, db)
		c := &Credential{UserID: 3, Password: "tamper-me-0123456789"}
		must(t, db.Create(c).Error)
		stored := getRaw(t, db, "credentials", "password", c.ID)
		raw, err := base64.RawURLEncoding.Strict().DecodeString(stored)
		must(t, err)
		full := testdb.DialectOf(db) == testdb.SQLite
		var cases []string
		for i := range raw {
			if !full && i > 3 && i < len(raw)-3 && i%7 != 0 {
				continue
			}
			for _, x := range []byte{0x01, 0x80, 0xff} {
				b := append([]byte(nil), raw...)
				b[i] ^= x
				cases = append(cases, base64.RawURLEncoding.EncodeToString(b))
			}
		}
		for n := range len(stored) {
			if full || n < 4 || n > len(stored)-4 || n%9 == 0 {
				cases = append(cases, stored[:n])
			}
		}
		cases = append(cases, stored+"A", stored+"AAAA", stored+"=")
		for i, v := range cases {
			setRaw(t, db, "credentials", "password", c.ID, v)
			got, err, p := readCredential(db, c.ID)
			if v == "" {
				// An empty column reads as the empty value.
				if p != nil || got.Password != "" {
					t.Fatalf("case %d (empty): %q, %v, %v", i, got.Password, err, p)
				}
				continue
			}
			if p != nil || !errors.Is(err, envelope.ErrDecrypt) || got.Password != "" {
				t.Fatalf("case %d %q: got %q, %v, panic %v; want ErrDecrypt", i, v, got.Password, err, p)
			}
		}
	})
}

// Switching the write format is an online change: values in both formats
// read, whichever format the plugin writes.
func TestBoundReadsBothFormats(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys, envelope.Config{Format: envelope.FormatFernet})
		old := &Credential{UserID: 4, Password: "fernet-era", APIKey: ptr("fernet-key")}
		must(t, db.Create(old).Error)
		if s := getRaw(t, db, "credentials", "password", old.ID); bound.IsBound([]byte(s)) {
			t.Skip("the suite runs every plugin in the bound format")
		}
		for _, f := range []envelope.Format{envelope.FormatBound, envelope.FormatFernet} {
			db2 := testdb.Reopen(t, db)
			if err := db2.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: f})); err != nil {
				t.Fatal(err)
			}
			c := &Credential{UserID: 4, Password: "written-" + f.String()}
			must(t, db2.Create(c).Error)
			if got := bound.IsBound([]byte(getRaw(t, db, "credentials", "password", c.ID))); got != (f == envelope.FormatBound) {
				t.Fatalf("%v: stored bound = %v", f, got)
			}
			// A Fernet value updated through the bound plugin is rewritten
			// bound; the row's other Fernet value still reads.
			var all []Credential
			must(t, db2.Order("id").Find(&all).Error)
			if len(all) < 2 || all[0].Password != "fernet-era" || *all[0].APIKey != "fernet-key" {
				t.Fatalf("%v: read %+v", f, all)
			}
		}
		if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: 7})); err == nil {
			t.Fatal("Format 7 accepted")
		}
	})
}

// A row-bound model writes on every path that names its row, and refuses,
// writing nothing, those that cannot: an id left to the database, an
// update of rows not named by id, an upsert on another unique key.
func TestBoundRowBindingPaths(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setupBound(t, db)
		read := func(id string) BoundNote {
			t.Helper()
			var n BoundNote
			must(t, db.First(&n, "id = ?", id).Error)
			return n
		}
		n := &BoundNote{ID: "r1", UserID: 7, Slug: "r1", Title: "t0", Body: ptr("b0")}
		must(t, db.Create(n).Error)
		must(t, db.CreateInBatches([]BoundNote{{ID: "r2", UserID: 7, Slug: "r2", Title: "t2"}, {ID: "r3", UserID: 8, Slug: "r3", Title: "t3"}}, 1).Error)
		n.Title = "t1"
		must(t, db.Save(n).Error)
		must(t, db.Model(n).Update("title", "t-update").Error)
		if got := read("r1"); got.Title != "t-update" || *got.Body != "b0" {
			t.Fatalf("after Update: %+v", got)
		}
		must(t, db.Model(n).Updates(map[string]any{"body": "b-map"}).Error)
		must(t, db.Model(&BoundNote{ID: "r1", UserID: 7}).Updates(BoundNote{Title: "t-struct"}).Error)
		if got := read("r1"); got.Title != "t-struct" || *got.Body != "b-map" {
			t.Fatalf("after Updates: %+v", got)
		}
		mysql := testdb.DialectOf(db) == testdb.MySQL
		// Save of a new row upserts; on MySQL, which updates on any unique
		// key (slug is one), that could update another row: refused there.
		if err := db.Save(&BoundNote{ID: "r4", UserID: 7, Slug: "r4", Title: "t4"}).Error; mysql != (err != nil) || mysql && !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("Save of a new row: %v", err)
		} else if mysql {
			must(t, db.Create(&BoundNote{ID: "r4", UserID: 7, Slug: "r4", Title: "t4"}).Error)
		}
		var foc BoundNote
		must(t, db.Where(BoundNote{ID: "r5"}).Attrs(BoundNote{UserID: 7, Slug: "r5", Title: "t5"}).FirstOrCreate(&foc).Error)
		err := db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, UpdateAll: true}).
			Create(&BoundNote{ID: "r2", UserID: 7, Slug: "r2", Title: "t2-upsert"}).Error
		if mysql {
			// MySQL updates on any unique key, and slug is one: the row
			// updated could be another than the one the value is sealed for.
			if !errors.Is(err, envelope.ErrUnsafe) {
				t.Fatalf("MySQL upsert of a model with a second unique key: %v, want ErrUnsafe", err)
			}
		} else if must(t, err); read("r2").Title != "t2-upsert" {
			t.Fatalf("after upsert on id: %+v", read("r2"))
		}
		for id, want := range map[string]string{"r3": "t3", "r4": "t4", "r5": "t5"} {
			if got := read(id); got.Title != want {
				t.Fatalf("%s: %+v", id, got)
			}
		}
		// Read without the primary key: the row cannot be named.
		var partial []BoundNote
		if err := db.Select("user_id", "title").Where("id = ?", "r1").Find(&partial).Error; !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("read without id: %v, want ErrDecrypt", err)
		}

		// Every value rewritten with the new id: sealed for the new row.
		must(t, db.Model(&BoundNote{ID: "r3", UserID: 8}).Updates(map[string]any{"id": "r3-new", "title": "t3-new", "body": "b3-new"}).Error)
		if got := read("r3-new"); got.Title != "t3-new" || *got.Body != "b3-new" {
			t.Fatalf("after a change of id: %+v", got)
		}
		before := snapshot(t, db)
		refused := map[string]*gorm.DB{
			"Create without id": db.Create(&BoundNote{UserID: 7, Slug: "r0", Title: "x"}),
			"Update by owner":   db.Model(&BoundNote{UserID: 7}).Where("slug <> ?", "").Update("title", "x"),
			"Updates map by condition": db.Model(&BoundNote{}).Where("slug = ?", "r1").
				Updates(map[string]any{"user_id": 7, "title": "x"}),
			"Update of the id":          db.Model(&BoundNote{ID: "r1", UserID: 7}).Update("id", "r1-new"),
			"Updates of id and a value": db.Model(&BoundNote{ID: "r1", UserID: 7}).Updates(map[string]any{"id": "r1-new", "title": "x"}),
			"upsert on slug": db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "slug"}}, UpdateAll: true}).
				Create(&BoundNote{ID: "r9", UserID: 7, Slug: "r1", Title: "x"}),
			"upsert assigning a value": db.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.Assignments(map[string]any{"title": "x"})}).
				Create(&BoundNote{ID: "r1", UserID: 7, Slug: "r1", Title: "x"}),
		}
		for name, res := range refused {
			if !errors.Is(res.Error, envelope.ErrUnsafe) {
				t.Errorf("%s: %v, want ErrUnsafe", name, res.Error)
			}
		}
		if after := snapshot(t, db); after != before {
			t.Fatalf("a refused write changed the table:\n%s\n%s", before, after)
		}
	})
}

// snapshot is the bound_notes table as stored.
func snapshot(t testing.TB, db *gorm.DB) string {
	t.Helper()
	var rows []map[string]any
	must(t, rawDB(db).Table("bound_notes").Order("id").Find(&rows).Error)
	return fmt.Sprint(rows)
}

// The tag is refused where it cannot bind.
func TestBoundRowTagRefused(t *testing.T) {
	type NotKey struct {
		ID     uint
		UserID uint   `envelope:"owner"`
		Ref    string `envelope:"row"`
		Secret string `gorm:"serializer:envelope"`
	}
	type Composite struct {
		A      string `gorm:"primaryKey" envelope:"row"`
		B      string `gorm:"primaryKey"`
		UserID uint   `envelope:"owner"`
		Secret string `gorm:"serializer:envelope"`
	}
	db := testdb.Open(t, testdb.SQLite)
	setupBound(t, db)
	for name, m := range map[string]any{"not the key": &NotKey{UserID: 1, Ref: "x", Secret: "s"}, "composite key": &Composite{A: "a", B: "b", UserID: 1, Secret: "s"}} {
		must(t, db.AutoMigrate(m))
		if err := db.Create(m).Error; err == nil {
			t.Errorf("%s: Create accepted", name)
		}
	}
}
