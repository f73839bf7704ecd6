package envelope

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"slices"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// inChunk bounds the number of owners in one IN (...) list.
const inChunk = 1000

const pendingKey = "envelope:pending"

// errNoDEK reports an owner whose profile holds no DEK, or who has no
// profile: nothing can have been encrypted for the owner.
var errNoDEK = fmt.Errorf("%w: owner has no DEK", ErrDecrypt)

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
func (p *Plugin) createAndLoad(tx *gorm.DB, owners []any, found map[any][]byte, mode txMode) (map[any][]byte, error) {
	sortOwners(owners)
	step := func(tx *gorm.DB) (map[any][]byte, error) {
		if err := p.lockCreation(tx); err != nil {
			return nil, err
		}
		if err := p.createDEKs(tx, owners, found); err != nil {
			return nil, err
		}
		// MySQL's default REPEATABLE READ would show this transaction's
		// snapshot, without the DEK a concurrent writer just committed: a
		// locking read sees the latest committed row.
		return p.loadDEKs(tx, owners, tx.Dialector.Name() == "mysql")
	}
	if mode != txNone || tx.Dialector.Name() == "sqlite" {
		again, err := step(tx)
		return again, conflictErr(err)
	}
	var again map[any][]byte
	var err error
	for range createTries {
		err = tx.Transaction(func(tx *gorm.DB) error {
			var err error
			again, err = step(tx)
			return err
		})
		if err = conflictErr(err); !errors.Is(err, ErrConflict) {
			break
		}
	}
	return again, err
}

// lockCreation takes the lock that serializes DEK creators until the end
// of tx's transaction: on PostgreSQL a transaction-level advisory lock, on
// MySQL the row of the plugin's lock table (see ensureLockTable). SQLite
// has one writer at a time already (lockSQLite).
func (p *Plugin) lockCreation(tx *gorm.DB) error {
	switch tx.Dialector.Name() {
	case "postgres":
		if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", p.lockID()).Error; err != nil {
			return p.queryErr(err)
		}
	case "mysql":
		if !p.lockTable.Load() {
			return nil
		}
		var name string
		if err := tx.Raw("SELECT name FROM "+lockTable+" WHERE name = ? FOR UPDATE", p.lockName()).Scan(&name).Error; err != nil {
			return p.queryErr(err)
		}
	}
	return nil
}

// lockTable is the table whose rows serialize the plugin's DEK creators on
// MySQL, which has no transaction-level advisory lock.
const lockTable = "envelope_locks"

// lockName names the lock of this plugin's profile table.
func (p *Plugin) lockName() string { return "dek:" + p.prof.Table }

// lockID is lockName as a PostgreSQL advisory lock key.
func (p *Plugin) lockID() int64 {
	h := fnv.New64a()
	h.Write([]byte("envelope:" + p.lockName()))
	return int64(h.Sum64())
}

// ensureLockTable creates MySQL's lock table and this plugin's row in it,
// if they do not exist. Without them (no privilege to create a table) DEK
// creation still works, and first writes for overlapping owners in long
// transactions may deadlock: they are reported as ErrConflict.
func (p *Plugin) ensureLockTable(db *gorm.DB) {
	if db.Dialector.Name() != "mysql" {
		return
	}
	tx := db.Session(&gorm.Session{NewDB: true, Context: context.Background()})
	// The row first: an operator may have created the table and the row
	// for an app user that may not create tables.
	var names []string
	if tx.Raw("SELECT name FROM "+lockTable+" WHERE name = ?", p.lockName()).Scan(&names).Error == nil && len(names) == 1 {
		p.lockTable.Store(true)
		return
	}
	err := tx.Exec("INSERT IGNORE INTO "+lockTable+" (name) VALUES (?)", p.lockName()).Error
	if err != nil {
		err = tx.Exec("CREATE TABLE IF NOT EXISTS " + lockTable + " (name VARCHAR(191) NOT NULL PRIMARY KEY)").Error
		if err == nil {
			err = tx.Exec("INSERT IGNORE INTO "+lockTable+" (name) VALUES (?)", p.lockName()).Error
		}
	}
	if err != nil {
		p.log.Warn("envelope: cannot create the lock table; concurrent first writes may report ErrConflict", "table", lockTable, "err", err.Error())
		return
	}
	p.lockTable.Store(true)
}

type txMode uint8

const (
	txNone    txMode = iota // autocommit: whatever is read or created is durable
	txOwn                   // a transaction this statement started: cache after its commit
	txForeign               // the caller's transaction: never cache, it may roll back
	txUnknown               // not asked yet
)

func modeOf(db *gorm.DB) txMode {
	if _, ok := db.Statement.ConnPool.(gorm.TxCommitter); !ok {
		return txNone
	}
	if startedTx(db) {
		return txOwn
	}
	return txForeign
}

// pendingKeys are DEKs loaded or created inside a transaction this
// statement started: cached only once it commits.
type pendingKeys map[any]*ownerKey

// resolve returns the DEK state of every owner: from the cache, else from
// one IN (...) query per chunk of owners on the statement's own connection
// (so it sees the statement's transaction). With create, owners without a
// DEK get one, created exactly once even under concurrent writers.
// Per-owner failures are in the second map; the error is for the query.
func (p *Plugin) resolve(db *gorm.DB, owners []any, create bool) (map[any]*ownerKey, map[any]error, error) {
	if p.keys == nil {
		return nil, nil, ErrNoKey
	}
	keys := make(map[any]*ownerKey, len(owners))
	var errs map[any]error
	var missing []any
	for _, o := range owners {
		if k, ok := p.cache.Get(o); ok {
			keys[o] = k
		} else {
			missing = append(missing, o)
		}
	}
	// The mode is asked only when an owner misses the cache.
	mode := txUnknown
	if len(missing) > 0 {
		mode = modeOf(db)
		if mode == txForeign {
			missing = p.txKeys.fill(db.Statement.ConnPool, missing, keys)
		}
	}
	if len(missing) == 0 {
		return keys, nil, nil
	}
	if db.DryRun {
		// A dry run writes nothing: encrypt under throwaway keys, never cached.
		if !create {
			return keys, nil, nil
		}
		for _, o := range missing {
			d, err := dek.NewDEK()
			if err != nil {
				return nil, nil, err
			}
			keys[o] = &ownerKey{c: token.New(d)}
		}
		return keys, nil, nil
	}

	ctx := db.Statement.Context
	tx := db.Session(&gorm.Session{NewDB: true})
	if create && db.Dialector.Name() == "sqlite" {
		// Take SQLite's write lock before reading: a transaction that reads
		// and then writes cannot upgrade its snapshot under concurrent writers.
		if err := lockSQLite(tx, p.prof.Table, p.prof.DEK.DBName); err != nil {
			return nil, nil, p.queryErr(err)
		}
	}
	found, err := p.loadDEKs(tx, missing, false)
	if err != nil {
		return nil, nil, err
	}
	loaded := make(map[any]*ownerKey, len(missing))
	openInto := func(o any, enc []byte) {
		if k, err := p.open(ctx, enc); err != nil {
			errs = setErr(errs, o, err)
		} else {
			loaded[o] = k
		}
	}
	var toCreate []any
	for _, o := range missing {
		enc := found[o]
		if len(enc) == 0 {
			if create {
				toCreate = append(toCreate, o)
			} else {
				// No DEK: nothing can have been encrypted for this owner.
				errs = setErr(errs, o, errNoDEK)
			}
			continue
		}
		openInto(o, enc)
	}
	if len(toCreate) > 0 {
		again, err := p.createAndLoad(tx, toCreate, found, mode)
		if err != nil {
			return nil, nil, err
		}
		for _, o := range toCreate {
			enc := again[o]
			if len(enc) == 0 {
				errs = setErr(errs, o, fmt.Errorf("%w: the owner's new DEK is not visible to this transaction (a snapshot older than another transaction's first write for the owner)", ErrConflict))
				continue
			}
			openInto(o, enc)
		}
	}
	if !create && len(errs) > 0 && tx.Dialector.Name() == "mysql" && mode != txNone {
		// MySQL's REPEATABLE READ snapshot may predate another instance's
		// first write for an owner: a locking read sees the latest
		// committed row. Only for owners the snapshot showed no DEK.
		var late []any
		for o, err := range errs {
			if errors.Is(err, errNoDEK) {
				late = append(late, o)
			}
		}
		if len(late) > 0 {
			sortOwners(late)
			latest, err := p.loadDEKs(tx, late, true)
			if err != nil {
				return nil, nil, err
			}
			for _, o := range late {
				if enc := latest[o]; len(enc) > 0 {
					delete(errs, o)
					openInto(o, enc)
				}
			}
		}
	}
	switch mode {
	case txForeign:
		p.txKeys.record(db.Statement.ConnPool, loaded)
	case txNone:
		for o, k := range loaded {
			p.cache.Put(o, k)
		}
	case txOwn:
		pend, _ := db.InstanceGet(pendingKey)
		pk, _ := pend.(pendingKeys)
		if pk == nil {
			pk = pendingKeys{}
			db.InstanceSet(pendingKey, pk)
		}
		for o, k := range loaded {
			pk[o] = k
		}
	}
	for o, k := range loaded {
		keys[o] = k
	}
	return keys, errs, nil
}

func sortOwners(owners []any) {
	slices.SortFunc(owners, func(a, b any) int {
		switch x := a.(type) {
		case int64:
			if y, ok := b.(int64); ok {
				return cmp.Compare(x, y)
			}
		case string:
			if y, ok := b.(string); ok {
				return cmp.Compare(x, y)
			}
		}
		return 0
	})
}

func setErr(m map[any]error, o any, err error) map[any]error {
	if m == nil {
		m = map[any]error{}
	}
	m[o] = err
	return m
}

// open decrypts a stored DEK (or recognises a tombstone). Opened DEKs are
// remembered by their stored bytes, and concurrent opens of the same bytes
// share one decryption, so cold reads of one owner from many goroutines
// make one call to the master key (a KMS). Keying by the stored bytes is
// safe inside any transaction: the same ciphertext always opens to the
// same DEK, whether or not the row holding it is ever committed.
func (p *Plugin) open(ctx context.Context, enc []byte) (*ownerKey, error) {
	if dek.IsTombstone(enc) {
		return &ownerKey{shredded: true}, nil
	}
	if k, ok := p.opened.Get(string(enc)); ok {
		return k, nil
	}
	v, err, _ := p.opening.Do(string(enc), func() (any, error) {
		if k, ok := p.opened.Get(string(enc)); ok {
			return k, nil
		}
		k, err := p.openNow(ctx, enc)
		if err == nil {
			p.opened.Put(string(enc), k)
		}
		return k, err
	})
	if err != nil {
		return nil, err
	}
	return v.(*ownerKey), nil
}

func (p *Plugin) openNow(ctx context.Context, enc []byte) (*ownerKey, error) {
	d, _, err := p.keys.Open(ctx, enc)
	if err != nil {
		if errors.Is(err, dek.ErrDecrypt) {
			return nil, fmt.Errorf("%w: no configured master key opens the owner's DEK", ErrDecrypt)
		}
		return nil, err
	}
	c := token.New(d)
	clear(d[:])
	return &ownerKey{c: c}, nil
}

func (p *Plugin) queryErr(err error) error {
	return fmt.Errorf("envelope: load DEKs from %s: %w", p.prof.Table, err)
}

// loadDEKs returns the stored encrypted DEK of each owner that has a
// profile row (nil for a NULL DEK).
func (p *Plugin) loadDEKs(tx *gorm.DB, owners []any, lock bool) (map[any][]byte, error) {
	out := make(map[any][]byte, len(owners))
	ownerCol, dekCol := p.prof.Owner.DBName, p.prof.DEK.DBName
	isString := p.prof.Owner.IndirectFieldType.Kind() == reflect.String
	for start := 0; start < len(owners); start += inChunk {
		chunk := owners[start:min(start+inChunk, len(owners))]
		q := tx.Table(p.prof.Table).
			Clauses(clause.Select{Columns: []clause.Column{{Name: ownerCol}, {Name: dekCol}}}).
			Where(clause.IN{Column: clause.Column{Name: ownerCol}, Values: chunk})
		if lock {
			q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
		}
		rows, err := q.Rows()
		if err != nil {
			return nil, p.queryErr(err)
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
				return nil, p.queryErr(err)
			}
			out[o] = enc
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, p.queryErr(err)
		}
	}
	return out, nil
}

// createDEKs gives each owner a fresh DEK without ever overwriting one:
// a profile row is inserted only where none exists (ON CONFLICT DO
// NOTHING), and an existing row gets a DEK only where its DEK column is
// still NULL, writing no other column.
func (p *Plugin) createDEKs(tx *gorm.DB, owners []any, found map[any][]byte) error {
	ctx := tx.Statement.Context
	rows := reflect.MakeSlice(reflect.SliceOf(p.prof.Type), 0, len(owners))
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
		enc, err := p.keys.Seal(ctx, d)
		if err != nil {
			clear(d[:])
			return err
		}
		// Remember the DEK by the bytes just sealed, so reading it back costs
		// no master-key call. Safe even if these bytes are never stored
		// (a lost race, a rollback): nothing will ever look them up.
		p.opened.Put(string(enc), &ownerKey{c: token.New(d)})
		clear(d[:])
		if _, exists := found[o]; exists {
			updates = append(updates, upd{o, enc})
			continue
		}
		row := reflect.New(p.prof.Type).Elem()
		if err := p.prof.Owner.Set(ctx, row, o); err != nil {
			return fmt.Errorf("envelope: set profile owner: %w", err)
		}
		if err := p.prof.DEK.Set(ctx, row, enc); err != nil {
			return fmt.Errorf("envelope: set profile DEK: %w", err)
		}
		rows = reflect.Append(rows, row)
	}
	if rows.Len() > 0 {
		ptr := reflect.New(rows.Type())
		ptr.Elem().Set(rows)
		err := tx.Clauses(clause.OnConflict{Columns: []clause.Column{{Name: p.prof.Owner.DBName}}, DoNothing: true}).
			Create(ptr.Interface()).Error
		if err != nil {
			return fmt.Errorf("envelope: create profiles in %s: %w", p.prof.Table, err)
		}
	}
	for _, u := range updates {
		err := tx.Table(p.prof.Table).
			Where(clause.Eq{Column: clause.Column{Name: p.prof.Owner.DBName}, Value: u.owner}).
			Where(clause.Expr{SQL: "? IS NULL", Vars: []any{clause.Column{Name: p.prof.DEK.DBName}}}).
			UpdateColumn(p.prof.DEK.DBName, u.enc).Error
		if err != nil {
			return fmt.Errorf("envelope: store DEK in %s: %w", p.prof.Table, err)
		}
	}
	return nil
}
