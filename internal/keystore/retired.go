package keystore

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/gorm-envelope/envelope/dek"

	"gorm.io/gorm"
)

// The retired DEKs of a rekey (envelope.Rekey): an owner's DEK replaced by
// a new one is kept, exactly as it was stored (wrapped by the master
// keys), until every value written under it by a process that still had
// it cached has been sealed again under the new one. A row whose
// encrypted_dek is NULL holds no key: it marks an owner whose rekey is
// done, so that a resumed envelope.RekeyAll does not rekey it twice.
//
// The statements go through the *gorm.DB given, so that they run in its
// transaction.

// RetiredTable is the table of retired DEKs.
const RetiredTable = "envelope_retired_deks"

var createRetired = map[string]string{
	"postgres": `CREATE TABLE IF NOT EXISTS ` + RetiredTable + ` (
	id bigserial PRIMARY KEY,
	profile_table varchar(191) NOT NULL,
	owner varchar(191) NOT NULL,
	encrypted_dek bytea,
	retired_at bigint NOT NULL
)`,
	"mysql": `CREATE TABLE IF NOT EXISTS ` + RetiredTable + ` (
	id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
	profile_table varchar(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
	owner varchar(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
	encrypted_dek longblob,
	retired_at bigint NOT NULL,
	KEY idx_envelope_retired_deks_owner (profile_table, owner)
)`,
	"sqlite": `CREATE TABLE IF NOT EXISTS ` + RetiredTable + ` (
	id integer PRIMARY KEY AUTOINCREMENT,
	profile_table varchar(191) NOT NULL,
	owner varchar(191) NOT NULL,
	encrypted_dek blob,
	retired_at integer NOT NULL
)`,
}

// RetiredExists reports whether db's database has the table of retired
// DEKs.
func RetiredExists(db *gorm.DB) (bool, error) {
	var q string
	switch db.Dialector.Name() {
	case "postgres":
		q = "SELECT count(*) FROM (SELECT to_regclass(?) AS t) AS r WHERE t IS NOT NULL"
	case "mysql":
		q = "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
	case "sqlite":
		q = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
	default:
		return db.Migrator().HasTable(RetiredTable), nil
	}
	var n int64
	if err := db.Raw(q, RetiredTable).Scan(&n).Error; err != nil {
		return false, fmt.Errorf("envelope: look for table %s: %w", RetiredTable, err)
	}
	return n > 0, nil
}

// EnsureRetiredTable creates the table of retired DEKs if it does not
// exist. Run it outside a transaction: PostgreSQL and MySQL commit or
// fail a transaction around DDL in ways of their own.
func EnsureRetiredTable(ctx context.Context, db *gorm.DB) error {
	db = db.Session(&gorm.Session{NewDB: true, Context: ctx})
	if ok, err := RetiredExists(db); err == nil && ok {
		return nil
	}
	q, ok := createRetired[db.Dialector.Name()]
	if !ok {
		return fmt.Errorf("envelope: no table %s for dialect %s", RetiredTable, db.Dialector.Name())
	}
	if err := db.Exec(q).Error; err != nil {
		if ok, e := RetiredExists(db); e == nil && ok {
			return nil
		}
		return fmt.Errorf("envelope: create table %s: %w", RetiredTable, err)
	}
	if db.Dialector.Name() != "mysql" {
		// Created with the table on MySQL; IF NOT EXISTS elsewhere.
		idx := "CREATE INDEX IF NOT EXISTS idx_envelope_retired_deks_owner ON " + RetiredTable + " (profile_table, owner)"
		if err := db.Exec(idx).Error; err != nil {
			return fmt.Errorf("envelope: create index on %s: %w", RetiredTable, err)
		}
	}
	return nil
}

// Retire records enc, owner's DEK as it is stored now, as retired, in
// db's transaction.
func (s *Store) Retire(db *gorm.DB, owner any, enc []byte) error {
	err := db.Exec("INSERT INTO "+RetiredTable+" (profile_table, owner, encrypted_dek, retired_at) VALUES (?, ?, ?, ?)",
		s.prof.Table, OwnerText(owner), enc, time.Now().UnixMilli()).Error
	if err != nil {
		return fmt.Errorf("envelope: record retired DEK: %w", err)
	}
	return nil
}

// Retired returns owner's retired DEKs, as stored, and when the owner's
// latest row (a retired DEK, or the mark of a finished rekey) was written:
// zero when the owner has none.
func (s *Store) Retired(db *gorm.DB, owner any) (encs [][]byte, latest time.Time, err error) {
	var rows []struct {
		EncryptedDEK []byte
		RetiredAt    int64
	}
	err = db.Raw("SELECT encrypted_dek AS encrypted_dek, retired_at AS retired_at FROM "+RetiredTable+" WHERE profile_table = ? AND owner = ? ORDER BY id",
		s.prof.Table, OwnerText(owner)).Scan(&rows).Error
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("envelope: read retired DEKs: %w", err)
	}
	for _, r := range rows {
		if len(r.EncryptedDEK) > 0 {
			encs = append(encs, r.EncryptedDEK)
		}
		if t := time.UnixMilli(r.RetiredAt); t.After(latest) {
			latest = t
		}
	}
	return encs, latest, nil
}

// runOwner is the owner of the row that records when a run over every
// owner began: no owner is the empty string (a zero owner is no owner).
const runOwner = ""

// StartRun returns when the run over every owner of the store's profile
// table that is under way began, and records that one begins now if none
// is: the mark of a run is cleared with the marks of its owners
// (ClearMarks).
func (s *Store) StartRun(db *gorm.DB) (time.Time, error) {
	var at []int64
	if err := db.Raw("SELECT retired_at FROM "+RetiredTable+" WHERE profile_table = ? AND owner = ? ORDER BY id",
		s.prof.Table, runOwner).Scan(&at).Error; err != nil {
		return time.Time{}, fmt.Errorf("envelope: read the rekey run: %w", err)
	}
	if len(at) > 0 {
		return time.UnixMilli(at[0]), nil
	}
	now := time.Now()
	if err := db.Exec("INSERT INTO "+RetiredTable+" (profile_table, owner, encrypted_dek, retired_at) VALUES (?, ?, NULL, ?)",
		s.prof.Table, runOwner, now.UnixMilli()).Error; err != nil {
		return time.Time{}, fmt.Errorf("envelope: record the rekey run: %w", err)
	}
	return time.UnixMilli(now.UnixMilli()), nil
}

// RunStarted returns when the run under way began, if one is.
func (s *Store) RunStarted(db *gorm.DB) (time.Time, bool, error) {
	var at []int64
	if err := db.Raw("SELECT retired_at FROM "+RetiredTable+" WHERE profile_table = ? AND owner = ? ORDER BY id",
		s.prof.Table, runOwner).Scan(&at).Error; err != nil {
		return time.Time{}, false, fmt.Errorf("envelope: read the rekey run: %w", err)
	}
	if len(at) == 0 {
		return time.Time{}, false, nil
	}
	return time.UnixMilli(at[0]), true, nil
}

// RetiredOwner is an owner with retired DEKs, and when the last of them
// was retired.
type RetiredOwner struct {
	Owner     any // normalised, as the profile table's owner column holds it
	RetiredAt time.Time
}

// RetiredOwners lists the owners of the store's profile table that have
// retired DEKs, in the order they were retired.
func (s *Store) RetiredOwners(db *gorm.DB) ([]RetiredOwner, error) {
	var rows []struct {
		Owner string
		At    int64
	}
	err := db.Raw("SELECT owner AS owner, MAX(retired_at) AS at FROM "+RetiredTable+
		" WHERE profile_table = ? AND encrypted_dek IS NOT NULL GROUP BY owner ORDER BY MIN(id)", s.prof.Table).
		Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("envelope: list retired DEKs: %w", err)
	}
	out := make([]RetiredOwner, 0, len(rows))
	for _, r := range rows {
		o, err := s.parseOwner(r.Owner)
		if err != nil {
			return nil, err
		}
		out = append(out, RetiredOwner{Owner: o, RetiredAt: time.UnixMilli(r.At)})
	}
	return out, nil
}

// DestroyRetired deletes owner's retired DEKs, or with keepMark replaces
// them by the mark of a finished rekey; it returns how many DEKs it
// destroyed.
func (s *Store) DestroyRetired(db *gorm.DB, owner any, keepMark bool) (int, error) {
	var res *gorm.DB
	if keepMark {
		res = db.Exec("UPDATE "+RetiredTable+" SET encrypted_dek = NULL WHERE profile_table = ? AND owner = ? AND encrypted_dek IS NOT NULL",
			s.prof.Table, OwnerText(owner))
	} else {
		var n int64
		if err := db.Raw("SELECT count(*) FROM "+RetiredTable+" WHERE profile_table = ? AND owner = ? AND encrypted_dek IS NOT NULL",
			s.prof.Table, OwnerText(owner)).Scan(&n).Error; err != nil {
			return 0, fmt.Errorf("envelope: destroy retired DEKs: %w", err)
		}
		if err := db.Exec("DELETE FROM "+RetiredTable+" WHERE profile_table = ? AND owner = ?", s.prof.Table, OwnerText(owner)).Error; err != nil {
			return 0, fmt.Errorf("envelope: destroy retired DEKs: %w", err)
		}
		return int(n), nil
	}
	if res.Error != nil {
		return 0, fmt.Errorf("envelope: destroy retired DEKs: %w", res.Error)
	}
	return int(res.RowsAffected), nil
}

// ClearMarks deletes the marks of finished rekeys of the store's profile
// table, and of the run: the end of a RekeyAll run.
func (s *Store) ClearMarks(db *gorm.DB) error {
	if err := db.Exec("DELETE FROM "+RetiredTable+" WHERE profile_table = ? AND encrypted_dek IS NULL", s.prof.Table).Error; err != nil {
		return fmt.Errorf("envelope: clear rekey marks: %w", err)
	}
	return nil
}

// RetiredPending counts the retired DEKs in db's database, of any profile
// table: 0 when it has no such table.
func RetiredPending(db *gorm.DB) (int, error) {
	ok, err := RetiredExists(db)
	if err != nil || !ok {
		return 0, err
	}
	var n int64
	if err := db.Raw("SELECT count(*) FROM " + RetiredTable + " WHERE encrypted_dek IS NOT NULL").Scan(&n).Error; err != nil {
		return 0, fmt.Errorf("envelope: count retired DEKs: %w", err)
	}
	return int(n), nil
}

// OpenStored opens enc, owner's DEK as stored in the profile table (a
// tombstone gives a shredded Key), through the opened cache.
func (s *Store) OpenStored(ctx context.Context, owner any, enc []byte) (*Key, error) {
	if s.keys == nil {
		return nil, dek.ErrNoKey
	}
	return s.open(ctx, owner, enc)
}

// parseOwner turns an owner's text back into the normalised owner of the
// profile table's owner column.
func (s *Store) parseOwner(text string) (any, error) {
	if s.prof.Owner.IndirectFieldType.Kind() == reflect.String {
		return text, nil
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("envelope: %s: owner %q is not an integer", RetiredTable, text)
	}
	return n, nil
}
