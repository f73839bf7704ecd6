package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// withFormat registers, on a new handle to db's database, a plugin that
// writes format, with keys and the test Profile.
func withFormat(t *testing.T, db *gorm.DB, keys *dek.Keyring, format envelope.Format) *gorm.DB {
	t.Helper()
	h := testdb.Reopen(t, db)
	must(t, h.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: format})))
	return h
}

// seedCredentials writes n credentials through h, for owners 1 to 4:
// every third has an API key, every second a blob, the others NULL.
func seedCredentials(t *testing.T, h *gorm.DB, n int) (values int) {
	t.Helper()
	for i := range n {
		c := rsCredential(i)
		must(t, h.Create(&c).Error)
		values += 1 + btoi(c.APIKey != nil) + btoi(c.Blob != nil)
	}
	return values
}

func rsCredential(i int) Credential {
	c := Credential{UserID: uint(1 + i%4), Facility: fmt.Sprint("f", i), Password: fmt.Sprint("pw-", i)}
	if i%3 == 0 {
		c.APIKey = ptr(fmt.Sprint("key-", i))
	}
	if i%2 == 0 {
		c.Blob = []byte(fmt.Sprint("blob-", i))
	}
	return c
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkCredentials reads the n credentials through h and compares them
// with what seedCredentials wrote.
func checkCredentials(t *testing.T, h *gorm.DB, n int) {
	t.Helper()
	var got []Credential
	must(t, h.Order("id").Find(&got).Error)
	if len(got) != n {
		t.Fatalf("%d rows, want %d", len(got), n)
	}
	for i, c := range got {
		w := rsCredential(i)
		if c.Password != w.Password || (c.APIKey == nil) != (w.APIKey == nil) || (c.APIKey != nil && *c.APIKey != *w.APIKey) || string(c.Blob) != string(w.Blob) {
			t.Fatalf("row %d: read %q %v %q", i, c.Password, c.APIKey, c.Blob)
		}
	}
}

// storedValues returns every non-NULL encrypted value of credentials, by
// id and column.
func storedValues(t *testing.T, db *gorm.DB) map[string]string {
	t.Helper()
	type row struct {
		ID       uint
		Password *string
		APIKey   *string
		Blob     *string
	}
	var rows []row
	must(t, db.Session(&gorm.Session{NewDB: true, Logger: logger.Discard}).Table("credentials").Order("id").Find(&rows).Error)
	out := map[string]string{}
	for _, r := range rows {
		for col, v := range map[string]*string{"password": r.Password, "api_key": r.APIKey, "blob": r.Blob} {
			if v != nil {
				out[fmt.Sprint(r.ID, ".", col)] = *v
			}
		}
	}
	return out
}

// notIn returns the keys of the stored values not in format.
func notIn(vals map[string]string, format envelope.Format) []string {
	var bad []string
	for k, v := range vals {
		isBound := bound.IsBound([]byte(v))
		if (format == envelope.FormatBound) != isBound || (!isBound && !token.LooksLikeString(v)) {
			bad = append(bad, k)
		}
	}
	slices.Sort(bad)
	return bad
}

// A table of Fernet tokens is moved to the bound format, batch by batch;
// reads give the same values before, during and after, with either
// format configured; a second run finds nothing to do.
func TestResealToBound(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		fernet := withFormat(t, db, keys, envelope.FormatFernet)
		must(t, fernet.AutoMigrate(&Profile{}, &Credential{}))
		const n = 23
		values := seedCredentials(t, fernet, n)
		if bad := notIn(storedValues(t, db), envelope.FormatFernet); len(bad) > 0 {
			t.Fatalf("seeded values not Fernet: %v", bad)
		}
		bnd := withFormat(t, db, keys, envelope.FormatBound)
		var progress []envelope.ResealResult
		res, err := envelope.Reseal(context.Background(), bnd, &Credential{}, envelope.ResealOptions{
			BatchSize: 7,
			Progress:  func(r envelope.ResealResult) { progress = append(progress, r) },
		})
		must(t, err)
		if res.Scanned != n || res.Resealed != values || res.Skipped != 0 || res.Imported != 0 || res.Unreadable != 0 || len(progress) != 4 {
			t.Fatalf("result %+v after %d batches; want %d rows, %d resealed, 4 batches", res, len(progress), n, values)
		}
		if progress[0].Scanned != 7 || progress[0].Last == nil || fmt.Sprint(res.Last) != fmt.Sprint(n) {
			t.Errorf("progress %+v, last %v", progress[0], res.Last)
		}
		if bad := notIn(storedValues(t, db), envelope.FormatBound); len(bad) > 0 {
			t.Fatalf("values not bound after Reseal: %v", bad)
		}
		checkCredentials(t, bnd, n)
		checkCredentials(t, fernet, n)
		again, err := envelope.Reseal(context.Background(), bnd, &Credential{}, envelope.ResealOptions{})
		if err != nil || again.Resealed != 0 || again.Skipped != values || again.Scanned != n {
			t.Fatalf("second run: %+v, %v", again, err)
		}
	})
}

// The way back: bound values become Fernet tokens again, which TOM
// Toolkit reads.
func TestResealToFernet(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		bnd := withFormat(t, db, keys, envelope.FormatBound)
		must(t, bnd.AutoMigrate(&Profile{}, &Credential{}))
		const n = 9
		values := seedCredentials(t, bnd, n)
		if bad := notIn(storedValues(t, db), envelope.FormatBound); len(bad) > 0 {
			t.Fatalf("seeded values not bound: %v", bad)
		}
		fernet := withFormat(t, db, keys, envelope.FormatFernet)
		res, err := envelope.Reseal(context.Background(), fernet, &Credential{}, envelope.ResealOptions{BatchSize: 4})
		must(t, err)
		if res.Scanned != n || res.Resealed != values || res.Skipped != 0 {
			t.Fatalf("result %+v; want %d resealed", res, values)
		}
		if bad := notIn(storedValues(t, db), envelope.FormatFernet); len(bad) > 0 {
			t.Fatalf("values not Fernet after Reseal: %v", bad)
		}
		checkCredentials(t, fernet, n)
		checkCredentials(t, bnd, n)
	})
}

// A run stopped after its first batch leaves a table of both formats that
// reads as before; going on after ResealResult.Last finishes it, and the
// counts of the two runs add up to one full run's.
func TestResealResume(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		fernet := withFormat(t, db, keys, envelope.FormatFernet)
		must(t, fernet.AutoMigrate(&Profile{}, &Credential{}))
		const n = 20
		values := seedCredentials(t, fernet, n)
		bnd := withFormat(t, db, keys, envelope.FormatBound)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		first, err := envelope.Reseal(ctx, bnd, &Credential{}, envelope.ResealOptions{BatchSize: 5, Progress: func(envelope.ResealResult) { cancel() }})
		if !errors.Is(err, context.Canceled) || first.Scanned != 5 || first.Last == nil {
			t.Fatalf("interrupted run: %+v, %v; want 5 rows and context.Canceled", first, err)
		}
		stored := storedValues(t, db)
		if b, f := len(notIn(stored, envelope.FormatFernet)), len(notIn(stored, envelope.FormatBound)); b != first.Resealed || f != values-first.Resealed {
			t.Fatalf("after the first batch: %d bound, %d Fernet values; want %d and %d", b, f, first.Resealed, values-first.Resealed)
		}
		checkCredentials(t, bnd, n) // reads work on the table of both formats
		checkCredentials(t, fernet, n)
		rest, err := envelope.Reseal(context.Background(), bnd, &Credential{}, envelope.ResealOptions{BatchSize: 5, After: first.Last})
		must(t, err)
		if rest.Scanned != n-5 || first.Resealed+rest.Resealed != values || rest.Skipped != 0 {
			t.Fatalf("resumed run: %+v after %+v; want %d rows and %d values in all", rest, first, n, values)
		}
		if bad := notIn(storedValues(t, db), envelope.FormatBound); len(bad) > 0 {
			t.Fatalf("values not bound after the resumed run: %v", bad)
		}
		checkCredentials(t, bnd, n)
	})
}

// A dry run counts what a run does and writes nothing: no value, and no
// DEK for the owner it would import for.
func TestResealDryRun(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		fernet := withFormat(t, db, keys, envelope.FormatFernet)
		must(t, fernet.AutoMigrate(&Profile{}, &Credential{}))
		const n = 11
		values := seedCredentials(t, fernet, n)
		appKey, _ := dek.GenerateKey()
		fk, _ := dek.ParseKey(appKey)
		tok, _ := fk.Encrypt(context.Background(), []byte("legacy"))
		raw := db.Session(&gorm.Session{NewDB: true})
		must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (?, ?, ?)", 99, "legacy", string(tok)).Error)
		from, err := envelope.FernetDecoder(appKey)
		must(t, err)
		before := storedValues(t, db)
		var profiles int64
		must(t, raw.Model(&Profile{}).Count(&profiles).Error)
		bnd := withFormat(t, db, keys, envelope.FormatBound)
		dry, err := envelope.Reseal(context.Background(), bnd, &Credential{}, envelope.ResealOptions{BatchSize: 4, DryRun: true, From: []envelope.Decoder{from}})
		must(t, err)
		if dry.Scanned != n+1 || dry.Resealed != values || dry.Imported != 1 || dry.Skipped != 0 || dry.Unreadable != 0 {
			t.Fatalf("dry run: %+v; want %d resealed and 1 imported", dry, values)
		}
		if after := storedValues(t, db); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatal("the dry run changed stored values")
		}
		var after int64
		must(t, raw.Model(&Profile{}).Count(&after).Error)
		if after != profiles {
			t.Fatalf("the dry run made %d profiles", after-profiles)
		}
		res, err := envelope.Reseal(context.Background(), bnd, &Credential{}, envelope.ResealOptions{From: []envelope.Decoder{from}})
		must(t, err)
		res.Last, dry.Last = nil, nil
		if fmt.Sprint(res) != fmt.Sprint(dry) {
			t.Fatalf("run %+v, dry run %+v: want the same counts", res, dry)
		}
	})
}

// Values under one app-wide Fernet key, and TOM Toolkit 3's values under
// its SECRET_KEY, are imported into their owners' DEKs (a new one for an
// owner without), and read through GORM; a value no decoder opens, and a
// shredded owner's value, are counted as unreadable and left as they were.
func TestResealImport(t *testing.T) {
	const secret = "tom-toolkit-django-secret-key-for-the-test"
	tomToks, _ := tomTokens(t, secret, "tom-pw-1", "tom-api-key-2", "tom-pw-3")
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		app := withFormat(t, db, keys, envelope.FormatBound)
		must(t, app.AutoMigrate(&Profile{}, &Credential{}))
		must(t, app.Create(&Credential{UserID: 1, Facility: "own", Password: "own-pw"}).Error) // owner 1 has a DEK
		must(t, app.Create(&Credential{UserID: 5, Facility: "shred", Password: "gone"}).Error)
		appKey, _ := dek.GenerateKey()
		fk, _ := dek.ParseKey(appKey)
		fernetTok := func(s string) string {
			tok, err := fk.Encrypt(context.Background(), []byte(s))
			must(t, err)
			return string(tok)
		}
		otherKey, _ := dek.GenerateKey()
		ok2, _ := dek.ParseKey(otherKey)
		wrong, _ := ok2.Encrypt(context.Background(), []byte("not-importable"))
		raw := db.Session(&gorm.Session{NewDB: true})
		ins := func(owner uint, facility, password string, apiKey any) uint {
			must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password, api_key) VALUES (?, ?, ?, ?)", owner, facility, password, apiKey).Error)
			var c Credential
			must(t, raw.Select("id").Where("facility = ?", facility).Take(&c).Error)
			return c.ID
		}
		idFernet := ins(1, "fernet", fernetTok("app-pw"), fernetTok("app-api"))
		idTOM1 := ins(2, "tom1", tomToks[0], tomToks[1]) // owner 2 has no DEK yet
		idTOM2 := ins(3, "tom2", tomToks[2], nil)
		idWrong := ins(2, "wrong", string(wrong), nil)
		idPlain := ins(3, "plain", "plaintext-pw", nil)
		idShred := ins(5, "shred-import", fernetTok("resurrected?"), nil)
		must(t, envelope.Shred(app, uint(5)))

		tomDec, err := envelope.TOMToolkitDecoder(secret)
		must(t, err)
		fDec, err := envelope.FernetDecoder(appKey)
		must(t, err)
		before := storedValues(t, db)
		res, err := envelope.Reseal(context.Background(), app, &Credential{}, envelope.ResealOptions{BatchSize: 3, From: []envelope.Decoder{fDec, tomDec}})
		must(t, err)
		// Skipped: own-pw; imported: 2 + 2 + 1; unreadable: wrong, plain,
		// and the shredded owner's two.
		if res.Scanned != 8 || res.Skipped != 1 || res.Imported != 5 || res.Unreadable != 4 || res.Resealed != 0 || len(res.Failures) != 4 {
			t.Fatalf("result %+v", res)
		}
		after := storedValues(t, db)
		for _, id := range []uint{idWrong, idPlain, idShred} {
			if k := fmt.Sprint(id, ".password"); after[k] != before[k] {
				t.Errorf("row %d: the unreadable value was rewritten", id)
			}
		}
		for _, f := range res.Failures {
			if !errors.Is(f.Err, envelope.ErrDecrypt) && !errors.Is(f.Err, envelope.ErrShredded) {
				t.Errorf("failure %v: want ErrDecrypt or ErrShredded", f)
			}
		}
		for id, want := range map[uint][2]string{idFernet: {"app-pw", "app-api"}, idTOM1: {"tom-pw-1", "tom-api-key-2"}, idTOM2: {"tom-pw-3", ""}} {
			var c Credential
			must(t, app.First(&c, id).Error)
			api := ""
			if c.APIKey != nil {
				api = *c.APIKey
			}
			if c.Password != want[0] || api != want[1] {
				t.Errorf("row %d: read %q, %q; want %q", id, c.Password, api, want)
			}
			if pw := after[fmt.Sprint(id, ".password")]; !bound.IsBound([]byte(pw)) {
				t.Errorf("row %d: stored password not bound", id)
			}
		}
		var p Profile
		if err := raw.Where("user_id = ?", 2).Take(&p).Error; err != nil || len(p.EncryptedDEK) == 0 {
			t.Errorf("owner 2 has no DEK after the import: %v", err)
		}
		again, err := envelope.Reseal(context.Background(), app, &Credential{}, envelope.ResealOptions{From: []envelope.Decoder{fDec, tomDec}})
		if err != nil || again.Imported != 0 || again.Skipped != 6 || again.Unreadable != 4 {
			t.Fatalf("second run: %+v, %v", again, err)
		}
	})
}

// rbBefore and rbAfter are one table before and after its primary key was
// tagged envelope:"row".
type rbBefore struct {
	ID     uint
	UserID uint   `envelope:"owner"`
	Secret string `gorm:"serializer:envelope"`
}

func (rbBefore) TableName() string { return "rb_notes" }

type rbAfter struct {
	ID     uint   `envelope:"row"`
	UserID uint   `envelope:"owner"`
	Secret string `gorm:"serializer:envelope"`
}

func (rbAfter) TableName() string { return "rb_notes" }

// Bound values sealed before the primary key was tagged envelope:"row"
// are sealed again bound to their row: they read with the tag, and no
// longer open when copied to another row of the same owner.
func TestResealRowBound(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		app := withFormat(t, db, keys, envelope.FormatBound)
		must(t, app.AutoMigrate(&Profile{}, &rbBefore{}))
		const n = 7
		for i := range n {
			must(t, app.Create(&rbBefore{UserID: 1, Secret: fmt.Sprint("note-", i)}).Error)
		}
		var got []rbAfter
		if err := app.Order("id").Find(&got).Error; !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("row-bound read of values without their row: %v; want ErrDecrypt", err)
		}
		res, err := envelope.Reseal(context.Background(), app, &rbAfter{}, envelope.ResealOptions{BatchSize: 3})
		must(t, err)
		if res.Scanned != n || res.Resealed != n || res.Skipped != 0 || res.Unreadable != 0 {
			t.Fatalf("result %+v; want %d resealed", res, n)
		}
		got = nil
		must(t, app.Order("id").Find(&got).Error)
		for i, r := range got {
			if r.Secret != fmt.Sprint("note-", i) {
				t.Fatalf("row %d: %q", i, r.Secret)
			}
		}
		// Bound to the row: row 1's value does not open in row 2.
		raw := db.Session(&gorm.Session{NewDB: true})
		v1, _ := rawColumn(t, db, "rb_notes", "secret", got[0].ID)
		must(t, raw.Exec("UPDATE rb_notes SET secret = ? WHERE id = ?", v1, got[1].ID).Error)
		var moved rbAfter
		if err := app.First(&moved, got[1].ID).Error; !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("row 1's value read in row 2: %v, %q", err, moved.Secret)
		}
		again, err := envelope.Reseal(context.Background(), app, &rbAfter{}, envelope.ResealOptions{})
		if err != nil || again.Skipped != n-1 || again.Unreadable != 1 || again.Resealed != 0 {
			t.Fatalf("second run: %+v, %v; want the copied value unreadable", again, err)
		}
	})
}

// An app writing while Reseal runs: every write of the app stays, as it
// wrote it (the job locks each batch's rows before reading them), and
// every row reads.
func TestResealConcurrentWrites(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		keys := newKeys(t)
		fernet := withFormat(t, db, keys, envelope.FormatFernet)
		must(t, fernet.AutoMigrate(&Profile{}, &Credential{}))
		const n = 40
		seedCredentials(t, fernet, n)
		bnd := withFormat(t, db, keys, envelope.FormatBound)
		done := make(chan error, 1)
		go func() {
			_, err := envelope.Reseal(context.Background(), bnd, &Credential{}, envelope.ResealOptions{BatchSize: 3})
			done <- err
		}()
		want := map[uint]string{}
		for round := 0; ; round++ {
			select {
			case err := <-done:
				must(t, err)
				if round == 0 {
					t.Log("Reseal finished before the first write")
				}
				var got []Credential
				must(t, bnd.Order("id").Find(&got).Error)
				for _, c := range got {
					if w, ok := want[c.ID]; ok && c.Password != w {
						t.Fatalf("row %d: %q, want the app's write %q", c.ID, c.Password, w)
					}
				}
				return
			default:
			}
			id := uint(1 + round*7%n)
			pw := fmt.Sprint("written-", round)
			if err := fernet.Model(&Credential{ID: id, UserID: uint(1 + (int(id)-1)%4)}).Update("Password", pw).Error; err != nil {
				if errors.Is(err, envelope.ErrConflict) {
					continue
				}
				t.Fatal(err)
			}
			want[id] = pw
		}
	})
}
