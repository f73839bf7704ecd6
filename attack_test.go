package envelope_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Attacks by someone who can write to the database but holds no key: every
// change they make to a stored token or DEK must read as ErrDecrypt (or
// ErrShredded for a tombstone), leave the field at its zero value, and never
// panic or hand back a plaintext the owner did not write. What the format
// does not bind (columns and rows of one owner, a DEK to its owner row) is
// asserted too, in tests named after the limitation.

const b64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// attackCase is one value written over a stored token.
type attackCase struct {
	name  string
	value string
	// sameBytes marks a different text, shaped like a token, that a lenient
	// base64 decoder (one that ignores the unused bits before padding and
	// whatever follows the padding) turns into the token's own bytes.
	sameBytes bool
}

// lenientDecode decodes like fernet-go's VerifyAndDecrypt: as much as
// base64.URLEncoding accepts, errors ignored.
func lenientDecode(s string) []byte {
	b := make([]byte, base64.URLEncoding.DecodedLen(len(s)))
	n, _ := base64.URLEncoding.Decode(b, []byte(s))
	return b[:n]
}

// tokenMutations returns single-character substitutions of tok at every
// position, single-bit flips of its decoded bytes re-encoded as valid
// base64url, truncations of its text and of its decoded bytes (re-encoded,
// so the shorter ones stay multiples of 4 and shaped like tokens), block
// shuffles and extensions. With full unset only a sample of positions is
// used (the database servers are slower per statement).
func tokenMutations(tok string, full bool) []attackCase {
	raw, err := base64.URLEncoding.DecodeString(tok)
	if err != nil {
		panic(fmt.Sprintf("not a base64url token: %v", err))
	}
	enc := base64.URLEncoding.EncodeToString
	pick := func(i, n int) bool { return full || i < 4 || i >= n-4 || i%5 == 0 }
	seen := map[string]bool{tok: true}
	var out []attackCase
	add := func(name, v string) {
		if !seen[v] {
			seen[v] = true
			same := token.LooksLikeString(v) && bytes.Equal(lenientDecode(v), raw)
			out = append(out, attackCase{name, v, same})
		}
	}
	set := func(s string, i int, c byte) string { return s[:i] + string(c) + s[i+1:] }

	for i := 0; i < len(tok); i++ {
		if !pick(i, len(tok)) {
			continue
		}
		c := tok[i]
		if c == '=' {
			for _, r := range []byte{'A', 'g', '-', '_'} {
				add(fmt.Sprintf("char %d '=' -> %q", i, r), set(tok, i, r))
			}
			continue
		}
		v := strings.IndexByte(b64url, c)
		for _, r := range []byte{b64url[v^1], b64url[v^0x20], b64url[v^0x3f], "+/=*"[i%4]} {
			add(fmt.Sprintf("char %d %q -> %q", i, c, r), set(tok, i, r))
		}
	}
	// Every character at the last position before the padding, where some
	// bits are unused.
	if last := len(strings.TrimRight(tok, "=")) - 1; last < len(tok)-1 {
		for j := 0; j < len(b64url); j++ {
			add(fmt.Sprintf("char %d %q -> %q", last, tok[last], b64url[j]), set(tok, last, b64url[j]))
		}
	}
	for i := range raw {
		if !pick(i, len(raw)) {
			continue
		}
		masks := []byte{1 << (i % 8), 0xff}
		if full {
			masks = []byte{1, 2, 4, 8, 16, 32, 64, 128, 0xff}
		}
		for _, m := range masks {
			b := bytes.Clone(raw)
			b[i] ^= m
			add(fmt.Sprintf("byte %d ^ %#02x", i, m), enc(b))
		}
	}
	for n := 1; n < len(tok); n++ {
		if pick(n, len(tok)) || n%4 == 0 && n >= token.MinLen {
			add(fmt.Sprintf("text[:%d]", n), tok[:n])
		}
	}
	for n := 1; n < len(raw); n++ { // n = 0 is the empty string: TestAttackEmptyValueReadsAsZero
		if pick(n, len(raw)) || len(enc(raw[:n])) >= token.MinLen {
			add(fmt.Sprintf("bytes[:%d] re-encoded", n), enc(raw[:n]))
		}
	}
	// Structure: 0x80 | ts(8) | iv(16) | ciphertext blocks | hmac(32).
	const ctOff, mac = 25, 32
	ct := raw[ctOff : len(raw)-mac]
	join := func(parts ...[]byte) string { return enc(bytes.Join(parts, nil)) }
	add("ciphertext emptied", join(raw[:ctOff], raw[len(raw)-mac:]))
	add("first block dropped", join(raw[:ctOff], ct[16:], raw[len(raw)-mac:]))
	add("last block dropped", join(raw[:ctOff], ct[:len(ct)-16], raw[len(raw)-mac:]))
	add("last block doubled", join(raw[:ctOff], ct, ct[len(ct)-16:], raw[len(raw)-mac:]))
	add("iv zeroed", join(raw[:9], make([]byte, 16), raw[ctOff:]))
	add("mac zeroed", join(raw[:len(raw)-mac], make([]byte, mac)))
	add("mac dropped", enc(raw[:len(raw)-mac]))
	if len(ct) >= 32 {
		add("blocks swapped", join(raw[:ctOff], ct[16:32], ct[:16], ct[32:], raw[len(raw)-mac:]))
	}
	add("one byte appended", join(raw, []byte{0}))
	add("one block appended", join(raw, make([]byte, 16)))
	add("text appended AAAA", tok+"AAAA")
	add("text appended ====", tok+"====")
	add("newline appended", tok+"\n")
	add("space prepended", " "+tok)
	add("token doubled", tok+tok)
	add("unpadded", strings.TrimRight(tok, "="))
	add("standard alphabet", base64.StdEncoding.EncodeToString(raw))
	add("upper-cased", strings.ToUpper(tok))
	return out
}

// rawDB is a session on db that runs plain SQL, bypassing the plugin.
func rawDB(db *gorm.DB) *gorm.DB {
	return db.Session(&gorm.Session{NewDB: true, Logger: logger.Discard})
}

func rawExec(t testing.TB, db *gorm.DB, sql string, args ...any) {
	t.Helper()
	if err := rawDB(db).Exec(sql, args...).Error; err != nil {
		t.Fatalf("raw %q: %v", sql, err)
	}
}

// rawCol returns the stored text of a credentials column, bypassing the plugin.
func rawCol(t testing.TB, db *gorm.DB, col string, id uint) (string, bool) {
	t.Helper()
	var v *string
	if err := rawDB(db).Raw("SELECT "+q(db, col)+" FROM credentials WHERE id = ?", id).Row().Scan(&v); err != nil {
		t.Fatalf("raw credentials.%s id %d: %v", col, id, err)
	}
	if v == nil {
		return "", false
	}
	return *v, true
}

// q quotes a column name for raw SQL ("blob" is a reserved word in MySQL).
func q(db *gorm.DB, name string) string { return db.Statement.Quote(name) }

// rawDEK returns the stored encrypted_dek of owner.
func rawDEK(t testing.TB, db *gorm.DB, owner uint) []byte {
	t.Helper()
	var enc []byte
	if err := rawDB(db).Table("profiles").Select("encrypted_dek").Where("user_id = ?", owner).Row().Scan(&enc); err != nil {
		t.Fatalf("raw encrypted_dek of owner %d: %v", owner, err)
	}
	return enc
}

// readCredential reads one row through GORM, turning a panic into an error
// the caller reports.
func readCredential(db *gorm.DB, id uint) (c Credential, err error, panicked any) {
	defer func() { panicked = recover() }()
	err = db.First(&c, id).Error
	return c, err, nil
}

// attackTarget is one encrypted column of a Credential row under attack.
type attackTarget struct {
	col   string
	plain string
	make  func(plain string) *Credential
	// field returns the attacked field's value and whether it is zero, and
	// whether the row's other encrypted field still reads correctly.
	field func(c Credential) (got any, zero, othersOK bool)
}

const intactPassword = "intact-password"

var attackTargets = []attackTarget{
	{"password", "atk-pt-short", // 12 bytes: one block, a 100-character token ending "=="
		func(p string) *Credential { return &Credential{Password: p} },
		func(c Credential) (any, bool, bool) { return c.Password, c.Password == "", true }},
	{"password", "attack-plaintext-marker", // 23 bytes: two blocks, 120 characters ending "="
		func(p string) *Credential { return &Credential{Password: p} },
		func(c Credential) (any, bool, bool) { return c.Password, c.Password == "", true }},
	{"api_key", "attack-apikey-marker-16",
		func(p string) *Credential { return &Credential{Password: intactPassword, APIKey: &p} },
		func(c Credential) (any, bool, bool) {
			if c.APIKey == nil {
				return nil, true, c.Password == intactPassword
			}
			return *c.APIKey, false, c.Password == intactPassword
		}},
	{"blob", "attack-blob-marker-0123",
		func(p string) *Credential { return &Credential{Password: intactPassword, Blob: []byte(p)} },
		func(c Credential) (any, bool, bool) {
			return string(c.Blob), c.Blob == nil, c.Password == intactPassword
		}},
}

// Every single-character change, bit flip, truncation and extension of a
// stored token reads as ErrDecrypt with the field at its zero value: never a
// panic, never a plaintext. All positions on SQLite, a sample on servers.
// The changes that only re-spell the token's own bytes are in
// TestAttackNonCanonicalTokenText.
func TestAttackTamperedTokens(t *testing.T) {
	fernetOnly(t)
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		runTamper(t, db, func(c attackCase) bool { return !c.sameBytes })
	})
}

// A token text that differs from the stored one only in the unused bits
// before its padding, or by data after its padding, is a change of the
// stored value too and must read as ErrDecrypt.
func TestAttackNonCanonicalTokenText(t *testing.T) {
	fernetOnly(t)
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		runTamper(t, db, func(c attackCase) bool { return c.sameBytes })
	})
}

// runTamper writes each mutation of a stored token that keep selects over
// the column, with plain SQL, and reads the row through GORM.
func runTamper(t *testing.T, db *gorm.DB, keep func(attackCase) bool) {
	setup(t, db, newKeys(t))
	full := testdb.DialectOf(db) == testdb.SQLite
	for ti, tg := range attackTargets {
		if !full && tg.col != "password" {
			continue
		}
		t.Run(fmt.Sprintf("%s-%d", tg.col, len(tg.plain)), func(t *testing.T) {
			row := tg.make(tg.plain)
			row.UserID, row.Facility = 1, fmt.Sprint("attack-", ti)
			must(t, db.Create(row).Error)
			tok, ok := rawCol(t, db, tg.col, row.ID)
			if !ok || !token.LooksLikeString(tok) {
				t.Fatalf("stored %s = %q, want a token", tg.col, tok)
			}
			var cases []attackCase
			for _, c := range tokenMutations(tok, full) {
				if keep(c) {
					cases = append(cases, c)
				}
			}
			if len(cases) == 0 {
				t.Fatal("no mutations selected")
			}
			// Last, the stored token itself: the harness does read the field.
			cases = append(cases, attackCase{name: "original token", value: tok})
			for i, tc := range cases {
				rawExec(t, db, "UPDATE credentials SET "+q(db, tg.col)+" = ? WHERE id = ?", tc.value, row.ID)
				c, err, p := readCredential(db, row.ID)
				got, zero, others := tg.field(c)
				switch {
				case p != nil:
					t.Errorf("#%d (%s): got panic %v, want ErrDecrypt", i, tc.name, p)
				case tc.value == tok:
					if err != nil || got != tg.plain || !others {
						t.Errorf("#%d (%s): got %q, %v, want %q, nil", i, tc.name, got, err, tg.plain)
					}
				case !errors.Is(err, envelope.ErrDecrypt) || errors.Is(err, envelope.ErrShredded):
					t.Errorf("#%d (%s): got %v, want %v", i, tc.name, err, envelope.ErrDecrypt)
				case !zero:
					t.Errorf("#%d (%s): got field %q, want %v", i, tc.name, got, "zero value")
				case !others:
					t.Errorf("#%d (%s): got password %q, want %q (untouched field)", i, tc.name, c.Password, intactPassword)
				}
			}
			t.Logf("%d mutations of a %d-character token", len(cases)-1, len(tok))
		})
	}
}

// An empty column is not a token: it reads like NULL, with no error and no
// plaintext, as an empty value (an attacker able to write an empty string
// can as well write NULL).
func TestAttackEmptyValueReadsAsZero(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		for i, tg := range attackTargets[1:] {
			row := tg.make(tg.plain)
			row.UserID = 1
			must(t, db.Create(row).Error)
			rawExec(t, db, "UPDATE credentials SET "+q(db, tg.col)+" = '' WHERE id = ?", row.ID)
			c, err, p := readCredential(db, row.ID)
			got, _, others := tg.field(c)
			if p != nil || (err != nil && !errors.Is(err, envelope.ErrDecrypt)) || !(got == nil || got == "") || !others {
				t.Errorf("#%d (%s): got %q, %v, panic %v, want an empty value", i, tg.col, got, err, p)
			}
		}
	})
}

// Values and rows moved from owner B to owner A read as ErrDecrypt: the
// owner is bound through the DEK.
func TestAttackCrossOwner(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		a := &Credential{UserID: 1, Facility: "a", Password: "owner-a-secret", APIKey: ptr("owner-a-key")}
		b := &Credential{UserID: 2, Facility: "b", Password: "owner-b-secret", APIKey: ptr("owner-b-key"), Blob: []byte("owner-b-blob")}
		must(t, db.Create(a).Error)
		must(t, db.Create(b).Error)
		bPass, _ := rawCol(t, db, "password", b.ID)
		bKey, _ := rawCol(t, db, "api_key", b.ID)
		bBlob, _ := rawCol(t, db, "blob", b.ID)
		aPass, _ := rawCol(t, db, "password", a.ID)
		aKey, _ := rawCol(t, db, "api_key", a.ID)
		restoreA := func() {
			rawExec(t, db, "UPDATE credentials SET user_id = 1, password = ?, api_key = ?, "+q(db, "blob")+" = NULL WHERE id = ?", aPass, aKey, a.ID)
		}
		cases := []struct {
			name  string
			sql   string
			args  []any
			check func(c Credential) bool // the attacked field is zero
		}{
			{"B's password token on A's password", "UPDATE credentials SET password = ? WHERE id = ?", []any{bPass, a.ID},
				func(c Credential) bool { return c.Password == "" && *c.APIKey == "owner-a-key" }},
			{"B's api_key token on A's api_key", "UPDATE credentials SET api_key = ? WHERE id = ?", []any{bKey, a.ID},
				func(c Credential) bool { return c.APIKey == nil && c.Password == "owner-a-secret" }},
			{"B's password token on A's api_key", "UPDATE credentials SET api_key = ? WHERE id = ?", []any{bPass, a.ID},
				func(c Credential) bool { return c.APIKey == nil && c.Password == "owner-a-secret" }},
			{"B's blob token on A's blob", "UPDATE credentials SET " + q(db, "blob") + " = ? WHERE id = ?", []any{bBlob, a.ID},
				func(c Credential) bool { return c.Blob == nil && c.Password == "owner-a-secret" }},
			{"A's row re-parented to B", "UPDATE credentials SET user_id = 2 WHERE id = ?", []any{a.ID},
				func(c Credential) bool { return c.Password == "" && c.APIKey == nil }},
			{"A's row re-parented to an owner with no DEK", "UPDATE credentials SET user_id = 3 WHERE id = ?", []any{a.ID},
				func(c Credential) bool { return c.Password == "" && c.APIKey == nil }},
		}
		for i, tc := range cases {
			restoreA()
			rawExec(t, db, tc.sql, tc.args...)
			c, err, p := readCredential(db, a.ID)
			switch {
			case p != nil:
				t.Errorf("#%d (%s): got panic %v, want ErrDecrypt", i, tc.name, p)
			case !errors.Is(err, envelope.ErrDecrypt):
				t.Errorf("#%d (%s): got %v, want %v", i, tc.name, err, envelope.ErrDecrypt)
			case !tc.check(c):
				t.Errorf("#%d (%s): got %+v, want the attacked field zero and the others intact", i, tc.name, c)
			}
			if strings.Contains(fmt.Sprint(c), "owner-b") {
				t.Errorf("#%d (%s): got B's plaintext in A's row: %+v", i, tc.name, c)
			}
		}
		// B's own row is untouched by all this.
		var got Credential
		must(t, db.First(&got, b.ID).Error)
		if got.Password != "owner-b-secret" || *got.APIKey != "owner-b-key" || string(got.Blob) != "owner-b-blob" {
			t.Fatalf("owner B's row: got %+v, want its plaintexts", got)
		}
	})
}

// Documented limitation (docs/security-model.md): tokens are bound to their
// owner only, not to a column or a row, so a token moved between two
// columns or two rows of the same owner DOES decrypt, to the moved value.
func TestAttackSameOwnerTokenMovedBetweenColumnsDecrypts(t *testing.T) {
	fernetOnly(t)
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		r1 := &Credential{UserID: 1, Facility: "r1", Password: "row1-password", APIKey: ptr("row1-key")}
		r2 := &Credential{UserID: 1, Facility: "r2", Password: "row2-password", APIKey: ptr("row2-key")}
		must(t, db.Create(r1).Error)
		must(t, db.Create(r2).Error)
		pass1, _ := rawCol(t, db, "password", r1.ID)
		key1, _ := rawCol(t, db, "api_key", r1.ID)
		cases := []struct {
			name string
			sql  string
			args []any
			id   uint
			want func(c Credential) (got, want any)
		}{
			{"password -> api_key, same row", "UPDATE credentials SET api_key = ? WHERE id = ?", []any{pass1, r1.ID}, r1.ID,
				func(c Credential) (any, any) { return deref(c.APIKey), "row1-password" }},
			{"api_key -> password, same row", "UPDATE credentials SET password = ? WHERE id = ?", []any{key1, r1.ID}, r1.ID,
				func(c Credential) (any, any) { return c.Password, "row1-key" }},
			{"password -> blob, same row", "UPDATE credentials SET " + q(db, "blob") + " = ? WHERE id = ?", []any{pass1, r1.ID}, r1.ID,
				func(c Credential) (any, any) { return string(c.Blob), "row1-password" }},
			{"password -> password, other row of the owner", "UPDATE credentials SET password = ? WHERE id = ?", []any{pass1, r2.ID}, r2.ID,
				func(c Credential) (any, any) { return c.Password, "row1-password" }},
		}
		for i, tc := range cases {
			rawExec(t, db, tc.sql, tc.args...)
			c, err, p := readCredential(db, tc.id)
			got, want := tc.want(c)
			if p != nil || err != nil || got != want {
				t.Errorf("#%d (%s): got %q, %v, panic %v, want %q, nil", i, tc.name, got, err, p, want)
			}
		}
	})
}

func deref(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}

// A replaced, corrupted or missing encrypted_dek makes the owner's data read
// as ErrDecrypt (ErrShredded for a tombstone), and writes for the owner fail
// the same way and store nothing.
func TestAttackReplacedDEK(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys, envelope.Config{CacheSize: -1}) // every statement reads the stored DEK
		a := &Credential{UserID: 1, Facility: "a", Password: "owner-a-secret"}
		b := &Credential{UserID: 2, Facility: "b", Password: "owner-b-secret"}
		must(t, db.Create(a).Error)
		must(t, db.Create(b).Error)
		aDEK, bDEK := rawDEK(t, db, 1), rawDEK(t, db, 2)
		flipped := bytes.Clone(aDEK)
		flipped[len(flipped)/2] ^= 1
		other, err := newKeys(t).Seal(t.Context(), mustDEK(t))
		must(t, err)
		notADEK, err := keys.Primary().Encrypt(t.Context(), []byte("a token under the master key, but not of a DEK"))
		must(t, err)
		shortDEK, err := keys.Primary().Encrypt(t.Context(), []byte(base64.URLEncoding.EncodeToString(make([]byte, 31))))
		must(t, err)

		cases := []struct {
			name    string
			dek     any // nil for NULL
			want    error
			noWrite bool // a write for the owner must fail too
		}{
			{"owner B's encrypted DEK", bDEK, envelope.ErrDecrypt, false},
			{"garbage text", []byte("garbage"), envelope.ErrDecrypt, true},
			{"garbage shaped like a token", []byte("gAAAAA" + strings.Repeat("A", 114)), envelope.ErrDecrypt, true},
			{"bit flipped", flipped, envelope.ErrDecrypt, true},
			{"truncated", aDEK[:len(aDEK)-4], envelope.ErrDecrypt, true},
			{"under another master key", other, envelope.ErrDecrypt, true},
			{"master-key token of a non-DEK", notADEK, envelope.ErrDecrypt, true},
			{"master-key token of a 31-byte key", shortDEK, envelope.ErrDecrypt, true},
			{"empty", []byte{}, envelope.ErrDecrypt, false},
			{"NULL", nil, envelope.ErrDecrypt, false},
			{"tombstone", dek.Tombstone(), envelope.ErrShredded, true},
		}
		for i, tc := range cases {
			rawExec(t, db, "UPDATE profiles SET encrypted_dek = ? WHERE user_id = 1", tc.dek)
			c, err, p := readCredential(db, a.ID)
			switch {
			case p != nil:
				t.Errorf("#%d (%s): got panic %v, want %v", i, tc.name, p, tc.want)
			case !errors.Is(err, tc.want):
				t.Errorf("#%d (%s): got %v, want %v", i, tc.name, err, tc.want)
			case tc.want == envelope.ErrShredded && errors.Is(err, envelope.ErrDecrypt):
				t.Errorf("#%d (%s): got %v, want %v only", i, tc.name, err, tc.want)
			case c.Password != "":
				t.Errorf("#%d (%s): got %q, want zero value", i, tc.name, c.Password)
			}
			if tc.noWrite {
				var before, after int64
				must(t, rawDB(db).Table("credentials").Count(&before).Error)
				err := db.Create(&Credential{UserID: 1, Facility: "write", Password: "write-under-bad-dek"}).Error
				must(t, rawDB(db).Table("credentials").Count(&after).Error)
				if !errors.Is(err, tc.want) || after != before {
					t.Errorf("#%d (%s) write: got %v and %d new rows, want %v and none", i, tc.name, err, after-before, tc.want)
				}
			}
		}
		// Put A's DEK back: the data was never damaged.
		rawExec(t, db, "UPDATE profiles SET encrypted_dek = ? WHERE user_id = 1", aDEK)
		var got Credential
		must(t, db.First(&got, a.ID).Error)
		if got.Password != "owner-a-secret" {
			t.Fatalf("after restoring the DEK: got %q, want %q", got.Password, "owner-a-secret")
		}
	})
}

func mustDEK(t testing.TB) dek.DEK {
	t.Helper()
	d, err := dek.NewDEK()
	must(t, err)
	return d
}

// Documented limitation: a stored DEK is not bound to its owner row, so
// copying both owner B's encrypted DEK and B's token onto owner A makes A's
// row read B's value. Binding the owner would need data the TOM Toolkit
// storage format does not have; docs/security-model.md lists it.
func TestAttackDEKAndTokenCopiedTogetherDecrypt(t *testing.T) {
	fernetOnly(t)
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t), envelope.Config{CacheSize: -1})
	a := &Credential{UserID: 1, Password: "owner-a-secret"}
	b := &Credential{UserID: 2, Password: "owner-b-secret"}
	must(t, db.Create(a).Error)
	must(t, db.Create(b).Error)
	bPass, _ := rawCol(t, db, "password", b.ID)
	rawExec(t, db, "UPDATE profiles SET encrypted_dek = ? WHERE user_id = 1", rawDEK(t, db, 2))
	rawExec(t, db, "UPDATE credentials SET password = ? WHERE id = ?", bPass, a.ID)
	c, err, p := readCredential(db, a.ID)
	if p != nil || err != nil || c.Password != "owner-b-secret" {
		t.Fatalf("got %q, %v, panic %v, want %q, nil", c.Password, err, p, "owner-b-secret")
	}
}

// A tombstone written over the DEK by hand reads as ErrShredded, as Shred's does.
func TestAttackTombstone(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t), envelope.Config{CacheSize: -1})
		c := &Credential{UserID: 5, Password: "to-be-shredded", APIKey: ptr("k"), Blob: []byte("b")}
		must(t, db.Create(c).Error)
		for i, shred := range []func(){
			func() { rawExec(t, db, "UPDATE profiles SET encrypted_dek = ? WHERE user_id = 5", dek.Tombstone()) },
			func() { must(t, envelope.Shred(db, 5)) },
		} {
			shred()
			got, err, p := readCredential(db, c.ID)
			if p != nil || !errors.Is(err, envelope.ErrShredded) || errors.Is(err, envelope.ErrDecrypt) {
				t.Errorf("#%d: got %v, panic %v, want %v", i, err, p, envelope.ErrShredded)
			}
			if got.Password != "" || got.APIKey != nil || got.Blob != nil {
				t.Errorf("#%d: got %+v, want zero values", i, got)
			}
		}
	})
}
