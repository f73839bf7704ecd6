package envelope_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// No log line (the plugin's slog output and GORM's SQL log at Info level)
// and no returned error holds a plaintext, a DEK or a master key, on any
// write path, read path, refusal or failure.

// marker is the prefix of every plaintext these tests write.
const marker = "pt-marker-"

func mk(name string) string { return marker + name }

// logsAccount has many Credentials, for Preload.
type logsAccount struct {
	ID          uint
	UserID      uint         `envelope:"owner"`
	Email       string       `gorm:"serializer:envelope"`
	Credentials []Credential `gorm:"foreignKey:UserID;references:UserID"`
}

// secrets is the key material a test must never find in its output, each
// in every encoding that could be printed.
type secrets struct {
	what map[string]string // encoded text -> what it is
}

func (s *secrets) add(what string, raw []byte) {
	if s.what == nil {
		s.what = map[string]string{}
	}
	forms := func(b []byte) []string {
		return []string{
			base64.URLEncoding.EncodeToString(b), base64.StdEncoding.EncodeToString(b),
			base64.RawURLEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
			hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)),
		}
	}
	all := forms(raw)
	// Each half (signing and encryption key) on its own too.
	all = append(all, forms(raw[:len(raw)/2])...)
	all = append(all, forms(raw[len(raw)/2:])...)
	// fmt's %v of a []byte or [32]byte: decimal numbers.
	all = append(all, strings.Trim(fmt.Sprint(raw[:12]), "[]"))
	for _, f := range all {
		s.what[f] = what
	}
}

// addKeyText adds a master key given as Fernet key text.
func (s *secrets) addKeyText(what, text string) {
	raw, err := base64.URLEncoding.DecodeString(text)
	if err != nil {
		panic(err)
	}
	s.add(what, raw)
	s.what[text] = what
}

// addDEKs opens every DEK stored in db's profiles and adds it.
func (s *secrets) addDEKs(t testing.TB, db *gorm.DB, keys *dek.Keyring) int {
	t.Helper()
	rows, err := rawDB(db).Table("profiles").Select("user_id", "encrypted_dek").Rows()
	must(t, err)
	defer rows.Close()
	n := 0
	for rows.Next() {
		var owner uint
		var enc []byte
		must(t, rows.Scan(&owner, &enc))
		if len(enc) == 0 || dek.IsTombstone(enc) {
			continue
		}
		d, _, _, err := keys.OpenBound(context.Background(), enc, profileRow(owner))
		if err != nil {
			t.Fatalf("open DEK of owner %d: %v", owner, err)
		}
		s.add(fmt.Sprint("DEK of owner ", owner), d[:])
		n++
	}
	must(t, rows.Err())
	return n
}

// find returns what secret or plaintext line holds, if any.
func (s *secrets) find(line string) []string {
	var found []string
	if strings.Contains(line, marker) {
		found = append(found, "a plaintext")
	}
	for text, what := range s.what {
		if strings.Contains(line, text) {
			found = append(found, fmt.Sprintf("%s (%q)", what, text))
		}
	}
	return found
}

// leaks reports every line holding a plaintext marker or a secret.
func (s *secrets) leaks(t *testing.T, source string, lines []string) {
	t.Helper()
	for i, line := range lines {
		if found := s.find(line); len(found) > 0 {
			t.Errorf("#%d %s: got %s in %q, want none", i, source, strings.Join(found, ", "), line)
		}
	}
}

func newKeyText(t testing.TB) (string, *dek.Keyring) {
	t.Helper()
	text, err := dek.GenerateKey()
	must(t, err)
	keys, err := dek.ParseKeyring(text)
	must(t, err)
	return text, keys
}

func TestLogsNoSecrets(t *testing.T) {
	for _, d := range testdb.Default {
		t.Run(string(d), func(t *testing.T) {
			sqlLog := newSQLLog()
			slogs := &slogCapture{}
			logger := slogLogger(slogs)
			db := testdb.Open(t, d, testdb.Options{Logger: sqlLog})
			keyText, keys := newKeyText(t)
			wrongText, wrongKeys := newKeyText(t)
			var sec secrets
			sec.addKeyText("the master key", keyText)
			sec.addKeyText("the wrong master key", wrongText)
			setup(t, db, keys, envelope.Config{Logger: logger})
			must(t, db.AutoMigrate(&logsAccount{}))

			var errs []string
			// expect records a returned error and checks its kind (nil: none).
			expect := func(what string, err, want error) {
				t.Helper()
				if err != nil {
					errs = append(errs, err.Error())
				}
				if (want == nil && err != nil) || (want != nil && !errors.Is(err, want)) {
					t.Errorf("%s: got %v, want %v", what, err, want)
				}
			}

			// Every write path.
			c := &Credential{UserID: 1, Facility: "f", Password: mk("create"), APIKey: ptr(mk("create-key")), Blob: []byte(mk("create-blob"))}
			expect("Create", db.Create(c).Error, nil)
			batch := make([]Credential, 12)
			for i := range batch {
				batch[i] = Credential{UserID: uint(2 + i%2), Facility: "batch", Password: mk(fmt.Sprint("batch-", i))}
			}
			expect("CreateInBatches", db.CreateInBatches(&batch, 5).Error, nil)
			c.Password = mk("save")
			expect("Save", db.Save(c).Error, nil)
			expect("Save new", db.Save(&Credential{UserID: 4, Password: mk("save-new")}).Error, nil)
			expect("Updates map", db.Model(c).Updates(map[string]any{"password": mk("updates-map"), "api_key": mk("updates-map-key")}).Error, nil)
			expect("Updates struct", db.Model(c).Updates(Credential{Password: mk("updates-struct")}).Error, nil)
			expect("Update", db.Model(c).Update("password", mk("update")).Error, nil)
			expect("UpdateColumn", db.Model(c).UpdateColumn("blob", []byte(mk("update-column"))).Error, nil)
			var foc Credential
			expect("FirstOrCreate Attrs", db.Where(Credential{UserID: 5, Facility: "foc"}).Attrs(Credential{Password: mk("foc-attrs")}).FirstOrCreate(&foc).Error, nil)
			expect("FirstOrCreate Assign", db.Where(Credential{UserID: 5, Facility: "foc"}).Assign(map[string]any{"password": mk("foc-assign")}).FirstOrCreate(&foc).Error, nil)
			expect("OnConflict", db.Clauses(clause.OnConflict{
				Columns:   []clause.Column{{Name: "id"}},
				DoUpdates: append(clause.Assignments(map[string]any{"password": mk("on-conflict")}), clause.AssignmentColumns([]string{"user_id", "api_key", "blob"})...),
			}).Create(&Credential{ID: c.ID, UserID: c.UserID, Password: mk("on-conflict-ignored"), APIKey: ptr(mk("updates-map-key")), Blob: []byte(mk("update-column"))}).Error, nil)
			expect("Create map", db.Model(&Credential{}).Create(map[string]any{"UserID": 6, "Password": mk("create-map"), "Facility": "map"}).Error, nil)
			expect("Transaction", db.Transaction(func(tx *gorm.DB) error {
				x := &Credential{UserID: 7, Password: mk("tx-create")}
				if err := tx.Create(x).Error; err != nil {
					return err
				}
				return tx.Model(x).Update("password", mk("tx-update")).Error
			}), nil)
			acc := &logsAccount{UserID: 8, Email: mk("account-email"), Credentials: []Credential{{Password: mk("account-child")}}}
			expect("Create with association", db.Create(acc).Error, nil)

			// Reads.
			var got Credential
			expect("First", db.First(&got, c.ID).Error, nil)
			if got.Password != mk("on-conflict") || *got.APIKey != mk("updates-map-key") || string(got.Blob) != mk("update-column") {
				t.Errorf("First: got %q %q %q, want the last writes", got.Password, deref(got.APIKey), got.Blob)
			}
			var all []Credential
			expect("Find", db.Order("id").Find(&all).Error, nil)
			var accs []logsAccount
			expect("Preload", db.Preload("Credentials").Find(&accs).Error, nil)
			if len(accs) != 1 || accs[0].Email != mk("account-email") || len(accs[0].Credentials) != 1 || accs[0].Credentials[0].Password != mk("account-child") {
				t.Errorf("Preload: got %+v, want the account and its credential", accs)
			}
			if n := sec.addDEKs(t, db, keys); n < 8 {
				t.Fatalf("got %d DEKs, want 8 or more", n)
			}

			// Refusals and failures.
			expect("Where struct", db.Where(&Credential{Password: mk("where-struct")}).First(&Credential{}).Error, envelope.ErrUnsafe)
			expect("Where map", db.Where(map[string]any{"password": mk("where-map")}).Find(&[]Credential{}).Error, envelope.ErrUnsafe)
			expect("Not struct", db.Not(&Credential{Password: mk("not-struct")}).Find(&[]Credential{}).Error, envelope.ErrUnsafe)
			expect("FirstOrCreate condition", db.Where(Credential{UserID: 9, Password: mk("foc-condition")}).FirstOrCreate(&Credential{}).Error, envelope.ErrUnsafe)
			expect("no owner", db.Create(&Credential{Password: mk("no-owner")}).Error, envelope.ErrNoOwner)
			expect("Update two owners", db.Model(&[]Credential{all[0], all[1]}).Update("password", mk("two-owners")).Error, envelope.ErrNoOwner)
			expect("Update expression", db.Model(c).Update("password", gorm.Expr("facility")).Error, envelope.ErrUnsafe)
			tampered := &Credential{UserID: 1, Facility: "tampered", Password: mk("tampered")}
			expect("Create to tamper", db.Create(tampered).Error, nil)
			tok, _ := rawCol(t, db, "password", tampered.ID)
			b := []byte(tok)
			if b[40] == 'A' {
				b[40] = 'B'
			} else {
				b[40] = 'A'
			}
			rawExec(t, db, "UPDATE credentials SET password = ? WHERE id = ?", string(b), tampered.ID)
			expect("tampered read", db.First(&Credential{}, tampered.ID).Error, envelope.ErrDecrypt)
			expect("tampered Find", db.Find(&[]Credential{}).Error, envelope.ErrDecrypt)
			rawExec(t, db, "UPDATE credentials SET password = ? WHERE id = ?", mk("stored-plaintext"), tampered.ID)
			expect("plaintext read", db.First(&Credential{}, tampered.ID).Error, envelope.ErrDecrypt)

			noKey := testdb.Reopen(t, db, testdb.Options{Logger: sqlLog})
			must(t, noKey.Use(envelope.New(envelope.Config{Profile: &Profile{}, Logger: logger})))
			expect("no-key read", noKey.First(&Credential{}, c.ID).Error, envelope.ErrNoKey)
			expect("no-key write", noKey.Create(&Credential{UserID: 1, Password: mk("no-key-write")}).Error, envelope.ErrNoKey)
			wrong := testdb.Reopen(t, db, testdb.Options{Logger: sqlLog})
			expect("wrong key Use", wrong.Use(envelope.New(envelope.Config{Keys: wrongKeys, Profile: &Profile{}, Logger: logger})), envelope.ErrDecrypt)

			expect("Shred", envelope.Shred(db, 3), nil)
			expect("read shredded", db.Where("user_id = 3").Find(&[]Credential{}).Error, envelope.ErrShredded)
			expect("write shredded", db.Create(&Credential{UserID: 3, Password: mk("after-shred")}).Error, envelope.ErrShredded)
			expect("Shred no owner", envelope.Shred(db, 0), envelope.ErrNoOwner)

			rawExec(t, db, "INSERT INTO profiles (user_id, nickname) VALUES (50, '')")
			n, err := envelope.Backfill(t.Context(), db, 0)
			expect("Backfill", err, nil)
			if n != 1 {
				t.Errorf("Backfill: got %d, want 1", n)
			}
			sec.addDEKs(t, db, keys)
			expect("write after Backfill", db.Create(&Credential{UserID: 50, Password: mk("backfilled")}).Error, nil)

			// The captures did capture: SQL with tokens, the warning, the audit line.
			gormLines := strings.Split(sqlLog.String(), "\n")
			if !strings.Contains(sqlLog.String(), "INSERT INTO") || !sealedIn(sqlLog.String()) {
				t.Fatalf("GORM log: got %d lines without INSERTs of tokens, want them", len(gormLines))
			}
			lines := slogs.Lines()
			joined := strings.Join(lines, "\n")
			if !strings.Contains(joined, "no master key") || !strings.Contains(joined, "shredded") {
				t.Errorf("slog: got %q, want the missing-key warning and the shred audit line", lines)
			}
			if len(errs) < 15 {
				t.Errorf("errors: got %d, want every expected refusal", len(errs))
			}
			sec.leaks(t, "GORM log", gormLines)
			sec.leaks(t, "slog", lines)
			sec.leaks(t, "error", errs)
			t.Logf("%d GORM log lines, %d slog lines, %d errors, %d secret encodings checked", len(gormLines), len(lines), len(errs), len(sec.what))
		})
	}
}

// The checker finds what it looks for: a DEK, in any of its encodings, or a
// plaintext marker in a line is reported.
func TestLogsCheckerFindsLeaks(t *testing.T) {
	var sec secrets
	d := mustDEK(t)
	sec.add("a DEK", d[:])
	cases := []string{
		base64.URLEncoding.EncodeToString(d[:]),
		base64.StdEncoding.EncodeToString(d[:]),
		hex.EncodeToString(d[:]),
		strings.ToUpper(hex.EncodeToString(d[16:])),
		fmt.Sprint(d[:]),
		fmt.Sprintf("%v", [32]byte(d)),
		"value=" + mk("x"),
	}
	for i, line := range cases {
		if found := sec.find(line); len(found) == 0 {
			t.Errorf("#%d: got no leak found in %q, want one", i, line)
		}
	}
	if found := sec.find("gAAAAABrCTs8 owner=1 envelope: cannot decrypt"); len(found) != 0 {
		t.Errorf("clean line: got %v, want nothing", found)
	}
	if bytes.Contains([]byte(fmt.Sprint(d)), []byte(hex.EncodeToString(d[:4]))) {
		t.Errorf("fmt.Sprint of a dek.DEK: got its bytes, want the placeholder")
	}
}

// EncryptExisting turns legacy plaintext into tokens without logging it:
// no statement it runs may show the old value in the SQL log.
func TestLogsEncryptExisting(t *testing.T) {
	for _, d := range testdb.Default {
		t.Run(string(d), func(t *testing.T) {
			sqlLog := newSQLLog()
			slogs := &slogCapture{}
			db := testdb.Open(t, d, testdb.Options{Logger: sqlLog})
			keyText, keys := newKeyText(t)
			var sec secrets
			sec.addKeyText("the master key", keyText)
			setup(t, db, keys, envelope.Config{Logger: slogLogger(slogs), AcceptPlaintext: true})
			for i := range 3 {
				rawExec(t, db, "INSERT INTO credentials (user_id, facility, password) VALUES (?, 'legacy', ?)", i+1, mk(fmt.Sprint("legacy-", i)))
			}
			var errs []string
			var rows []Credential
			if err := db.Order("id").Find(&rows).Error; err != nil {
				errs = append(errs, err.Error())
				t.Errorf("read during the migration window: got %v, want nil", err)
			}
			res, err := envelope.EncryptExisting(t.Context(), db, &Credential{}, envelope.MigrateOptions{BatchSize: 2})
			if err != nil {
				errs = append(errs, err.Error())
				t.Fatalf("EncryptExisting: got %v, want nil", err)
			}
			if res.Encrypted != 3 {
				t.Errorf("EncryptExisting: got %d encrypted, want 3", res.Encrypted)
			}
			sec.addDEKs(t, db, keys)
			sec.leaks(t, "GORM log", strings.Split(sqlLog.String(), "\n"))
			sec.leaks(t, "slog", slogs.Lines())
			sec.leaks(t, "error", errs)
		})
	}
}
