package keystore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// The SQL of the store: reading DEKs, creating them, and the lock that
// serializes their creators.

// ErrConflict reports concurrent first writes for an owner that conflicted
// inside a transaction: retry the transaction.
var ErrConflict = errors.New("envelope: concurrent first writes for an owner conflicted; retry the transaction")

// ErrNoDEK reports an owner whose profile holds no DEK, or who has no
// profile: nothing can have been encrypted for the owner.
var ErrNoDEK = fmt.Errorf("%w: owner has no DEK", dek.ErrDecrypt)

// inChunk bounds the number of owners in one IN (...) list.
const inChunk = 1000

// createTries bounds how often the plugin's own DEK creation is tried when
// it runs in a transaction of its own and the database reports a
// serialization failure.
const createTries = 3

// createAndLoad creates DEKs for owners that have none and reads back what
// is stored for them. Creators are serialized by a lock that lasts until
// the end of the transaction (see lockCreation), so first writes for
// overlapping owners from many transactions, each creating DEKs over
// several statements in its own order, cannot deadlock. Outside a
// transaction the creation runs in a short one of its own, retried on a
// serialization failure; inside one, such a failure is returned as
// ErrConflict: the caller's transaction must be retried.
func (s *Store) createAndLoad(tx *gorm.DB, owners []any, found map[any][]byte, mode Mode) (map[any][]byte, error) {
	sortOwners(owners)
	step := func(tx *gorm.DB) (map[any][]byte, error) {
		if err := s.LockCreation(tx); err != nil {
			return nil, err
		}
		if err := s.createDEKs(tx, owners, found); err != nil {
			return nil, err
		}
		// MySQL's default REPEATABLE READ would show this transaction's
		// snapshot, without the DEK a concurrent writer just committed: a
		// locking read sees the latest committed row.
		return s.load(tx, owners, tx.Dialector.Name() == "mysql")
	}
	if mode != None || tx.Dialector.Name() == "sqlite" {
		again, err := step(tx)
		return again, ConflictErr(err)
	}
	var again map[any][]byte
	var err error
	for range createTries {
		err = tx.Transaction(func(tx *gorm.DB) error {
			var err error
			again, err = step(tx)
			return err
		})
		if err = ConflictErr(err); !errors.Is(err, ErrConflict) {
			break
		}
	}
	return again, err
}

// lockCreation takes the lock that serializes DEK creators until the end
// of tx's transaction: on PostgreSQL a transaction-level advisory lock, on
// MySQL the row of the plugin's lock table (see EnsureLockTable). SQLite
// has one writer at a time already (LockSQLite).
func (s *Store) LockCreation(tx *gorm.DB) error {
	switch tx.Dialector.Name() {
	case "postgres":
		if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", s.lockID()).Error; err != nil {
			return s.queryErr(err)
		}
	case "mysql":
		if !s.lockTable.Load() {
			return nil
		}
		var name string
		if err := tx.Raw("SELECT name FROM "+lockTable+" WHERE name = ? FOR UPDATE", s.lockName()).Scan(&name).Error; err != nil {
			return s.queryErr(err)
		}
	}
	return nil
}

// lockTable is the table whose rows serialize the plugin's DEK creators on
// MySQL, which has no transaction-level advisory lock.
const lockTable = "envelope_locks"

// lockName names the lock of this plugin's profile table.
func (s *Store) lockName() string { return "dek:" + s.prof.Table }

// lockID is lockName as a PostgreSQL advisory lock key.
func (s *Store) lockID() int64 {
	h := fnv.New64a()
	h.Write([]byte("envelope:" + s.lockName()))
	return int64(h.Sum64())
}

// EnsureLockTable creates MySQL's lock table and this plugin's row in it,
// if they do not exist. Without them (no privilege to create a table) DEK
// creation still works, and first writes for overlapping owners in long
// transactions may deadlock: they are reported as ErrConflict.
func (s *Store) EnsureLockTable(db *gorm.DB) {
	if db.Dialector.Name() != "mysql" {
		return
	}
	tx := db.Session(&gorm.Session{NewDB: true, Context: context.Background()})
	// The row first: an operator may have created the table and the row
	// for an app user that may not create tables.
	var names []string
	if tx.Raw("SELECT name FROM "+lockTable+" WHERE name = ?", s.lockName()).Scan(&names).Error == nil && len(names) == 1 {
		s.lockTable.Store(true)
		return
	}
	err := tx.Exec("INSERT IGNORE INTO "+lockTable+" (name) VALUES (?)", s.lockName()).Error
	if err != nil {
		err = tx.Exec("CREATE TABLE IF NOT EXISTS " + lockTable + " (name VARCHAR(191) NOT NULL PRIMARY KEY)").Error
		if err == nil {
			err = tx.Exec("INSERT IGNORE INTO "+lockTable+" (name) VALUES (?)", s.lockName()).Error
		}
	}
	if err != nil {
		s.log.Warn("envelope: cannot create the lock table; concurrent first writes may report ErrConflict", "table", lockTable, "err", err.Error())
		return
	}
	s.lockTable.Store(true)
}

// loadDEKs returns the stored encrypted DEK of each owner that has a
// profile row (nil for a NULL DEK).
func (s *Store) load(tx *gorm.DB, owners []any, lock bool) (map[any][]byte, error) {
	out := make(map[any][]byte, len(owners))
	ownerCol, dekCol := s.prof.Owner.DBName, s.prof.DEK.DBName
	isString := s.prof.Owner.IndirectFieldType.Kind() == reflect.String
	for start := 0; start < len(owners); start += inChunk {
		chunk := owners[start:min(start+inChunk, len(owners))]
		q := tx.Table(s.prof.Table).
			Clauses(clause.Select{Columns: []clause.Column{{Name: ownerCol}, {Name: dekCol}}}).
			Where(clause.IN{Column: clause.Column{Name: ownerCol}, Values: chunk})
		if lock {
			q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
		}
		rows, err := q.Rows()
		if err != nil {
			return nil, s.queryErr(err)
		}
		for rows.Next() {
			var enc []byte
			var o any
			if isString {
				var s string
				err = rows.Scan(&s, &enc)
				o = s
			} else {
				var n int64
				err = rows.Scan(&n, &enc)
				o = n
			}
			if err != nil {
				rows.Close()
				return nil, s.queryErr(err)
			}
			out[o] = enc
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, s.queryErr(err)
		}
	}
	return out, nil
}

// createDEKs gives each owner a fresh DEK without ever overwriting one:
// a profile row is inserted only where none exists (ON CONFLICT DO
// NOTHING), and an existing row gets a DEK only where its DEK column is
// still NULL, writing no other column.
func (s *Store) createDEKs(tx *gorm.DB, owners []any, found map[any][]byte) error {
	ctx := tx.Statement.Context
	rows := reflect.MakeSlice(reflect.SliceOf(s.prof.Type), 0, len(owners))
	type upd struct {
		owner any
		enc   []byte
	}
	var updates []upd
	for _, o := range owners {
		d, err := dek.NewDEK()
		if err != nil {
			return err
		}
		enc, err := s.Seal(ctx, o, d)
		if err != nil {
			clear(d[:])
			return err
		}
		// Remember the DEK by the owner and the bytes just sealed, so
		// reading it back costs no master-key call. Safe even if these
		// bytes are never stored (a lost race, a rollback): nothing will
		// ever look them up.
		s.opened.Put(openedName(o, enc), newKey(d))
		clear(d[:])
		if _, exists := found[o]; exists {
			updates = append(updates, upd{o, enc})
			continue
		}
		row := reflect.New(s.prof.Type).Elem()
		if err := s.prof.Owner.Set(ctx, row, o); err != nil {
			return fmt.Errorf("envelope: set profile owner: %w", err)
		}
		if err := s.prof.DEK.Set(ctx, row, enc); err != nil {
			return fmt.Errorf("envelope: set profile DEK: %w", err)
		}
		rows = reflect.Append(rows, row)
	}
	if rows.Len() > 0 {
		ptr := reflect.New(rows.Type())
		ptr.Elem().Set(rows)
		err := tx.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: s.prof.Owner.DBName}}, DoNothing: true}).
			Create(ptr.Interface()).Error
		if err != nil {
			return fmt.Errorf("envelope: create profiles in %s: %w", s.prof.Table, err)
		}
	}
	for _, u := range updates {
		err := tx.Table(s.prof.Table).
			Where(clause.Eq{Column: clause.Column{Name: s.prof.Owner.DBName}, Value: u.owner}).
			Where(clause.Expr{SQL: "? IS NULL", Vars: []any{clause.Column{Name: s.prof.DEK.DBName}}}).
			UpdateColumn(s.prof.DEK.DBName, u.enc).Error
		if err != nil {
			return fmt.Errorf("envelope: store DEK in %s: %w", s.prof.Table, err)
		}
	}
	return nil
}

// LockSQLite takes SQLite's write lock at the start of a transaction, so
// what it then reads cannot change before it writes.
func LockSQLite(tx *gorm.DB, table, col string) error {
	q := tx.Statement.Quote
	return tx.Exec("UPDATE " + q(table) + " SET " + q(col) + " = " + q(col) + " WHERE 1 = 0").Error
}

// ConflictErr wraps in ErrConflict an error a database reports for a
// deadlock or a serialization failure: PostgreSQL's SQLSTATE 40001 and
// 40P01 (also CockroachDB's and YugabyteDB's), MySQL's 1213 and SQLSTATE
// 40001. No driver is imported here, so the codes are read from the
// drivers' error texts ("... (SQLSTATE 40P01)", "Error 1213 (40001):
// ..."); a tripwire test checks them against real deadlocks.
func ConflictErr(err error) error {
	if err == nil || errors.Is(err, ErrConflict) {
		return err
	}
	s := err.Error()
	for _, code := range []string{"SQLSTATE 40001", "SQLSTATE 40P01", "Error 1213 ", "(40001)"} {
		if strings.Contains(s, code) {
			return fmt.Errorf("%w: %w", ErrConflict, err)
		}
	}
	return err
}
