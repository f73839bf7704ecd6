package indexkeys

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
)

// The SQL of the store. Statements go to the connection pool directly,
// not through GORM's callbacks, so no plugin hook sees them.

// createTable is the table's definition per dialect. The unique key is part
// of CREATE TABLE, so a table that exists has it.
var createTable = map[string]string{
	"postgres": `CREATE TABLE IF NOT EXISTS ` + Table + ` (
	id bigserial PRIMARY KEY,
	name varchar(191) NOT NULL,
	version integer NOT NULL,
	wrapped_key bytea NOT NULL,
	retired boolean NOT NULL DEFAULT false,
	created_at timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT idx_envelope_index_keys_name_version UNIQUE (name, version)
)`,
	// The name compares byte for byte, not by the database's default
	// collation, which would take "Email" for "email".
	"mysql": `CREATE TABLE IF NOT EXISTS ` + Table + ` (
	id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
	name varchar(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
	version int NOT NULL,
	wrapped_key longblob NOT NULL,
	retired boolean NOT NULL DEFAULT false,
	created_at datetime(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
	UNIQUE KEY idx_envelope_index_keys_name_version (name, version)
)`,
	"sqlite": `CREATE TABLE IF NOT EXISTS ` + Table + ` (
	id integer PRIMARY KEY AUTOINCREMENT,
	name varchar(191) NOT NULL,
	version integer NOT NULL,
	wrapped_key blob NOT NULL,
	retired numeric NOT NULL DEFAULT false,
	created_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP,
	CONSTRAINT idx_envelope_index_keys_name_version UNIQUE (name, version)
)`,
}

// insertIfAbsent inserts a version unless (name, version) exists.
var insertIfAbsent = map[string]string{
	"postgres": `INSERT INTO ` + Table + ` (name, version, wrapped_key) VALUES ($1, $2, $3) ON CONFLICT (name, version) DO NOTHING`,
	"mysql":    `INSERT IGNORE INTO ` + Table + ` (name, version, wrapped_key) VALUES (?, ?, ?)`,
	"sqlite":   `INSERT INTO ` + Table + ` (name, version, wrapped_key) VALUES (?, ?, ?) ON CONFLICT (name, version) DO NOTHING`,
}

// supported reports whether the dialect is one the store has SQL for.
func supported(dialect string) bool {
	_, ok := createTable[dialect]
	return ok
}

// ph returns the i-th (1-based) bind placeholder of the dialect.
func (s *Store) ph(i int) string {
	if s.dialect == "postgres" {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// EnsureTable creates the table if it does not exist. It is safe to call
// from several processes at once, and to call again: an existing table is
// left as it is (and found without needing the privilege to create one).
func (s *Store) EnsureTable(ctx context.Context) error {
	if s.err != nil {
		return s.err
	}
	if ok, err := exists(ctx, s.pool, s.dialect); err == nil && ok {
		return nil
	}
	if _, err := s.pool.ExecContext(ctx, createTable[s.dialect]); err != nil {
		// Two PostgreSQL sessions creating the table at once may both pass
		// IF NOT EXISTS, and one then fails on the catalog's unique index.
		if ok, e := exists(ctx, s.pool, s.dialect); e == nil && ok {
			return nil
		}
		return fmt.Errorf("envelope: create table %s: %w", Table, err)
	}
	return nil
}

// Exists reports whether db's database has the index-key table.
func Exists(ctx context.Context, db *gorm.DB) (bool, error) {
	if !supported(db.Dialector.Name()) {
		return db.WithContext(ctx).Migrator().HasTable(Table), nil
	}
	return exists(ctx, db.Statement.ConnPool, db.Dialector.Name())
}

func exists(ctx context.Context, pool gorm.ConnPool, dialect string) (bool, error) {
	var q string
	switch dialect {
	case "postgres":
		// Resolved through search_path, as the store's own statements are.
		q = "SELECT count(*) FROM (SELECT to_regclass($1) AS t) AS r WHERE t IS NOT NULL"
	case "mysql":
		q = "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
	default:
		q = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
	}
	var n int64
	if err := queryRow(ctx, pool, q, []any{Table}, &n); err != nil {
		return false, fmt.Errorf("envelope: look for table %s: %w", Table, err)
	}
	return n > 0, nil
}

func queryRow(ctx context.Context, pool gorm.ConnPool, q string, args []any, dest ...any) error {
	rows, err := pool.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return rows.Close()
}

// row is one stored version of a name.
type row struct {
	version int
	wrapped []byte
	retired bool
}

// read returns every stored version of name, retired ones too, newest
// first.
func (s *Store) read(ctx context.Context, name string) ([]row, error) {
	q := "SELECT version, wrapped_key, retired FROM " + Table + " WHERE name = " + s.ph(1) + " ORDER BY version DESC"
	rows, err := s.pool.QueryContext(ctx, q, name)
	if err != nil {
		return nil, s.readErr(name, err)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		var (
			r row
			v int64
		)
		if err := rows.Scan(&v, &r.wrapped, &r.retired); err != nil {
			return nil, s.readErr(name, err)
		}
		r.version = int(v)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr(name, err)
	}
	return out, s.readErr(name, rows.Close())
}

func (s *Store) readErr(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("envelope: read blind-index key %q from %s: %w", name, Table, err)
}

// insertTries bounds the tries of an insert that the database aborted as
// a deadlock or serialization failure (concurrent inserts of one version on
// MySQL can be).
const insertTries = 3

// insert makes a new key and stores it as the given version of name,
// unless that version exists: the caller reads back which key is stored.
func (s *Store) insert(ctx context.Context, name string, version int) (*made, error) {
	d, err := dek.NewDEK()
	if err != nil {
		return nil, err
	}
	m := &made{version: version, key: d}
	clear(d[:])
	start := time.Now()
	m.wrapped, err = s.keys.Seal(ctx, m.key)
	s.keyCall("encrypt", start, err)
	if err != nil {
		m.clear()
		return nil, fmt.Errorf("envelope: blind-index key %q: %w", name, err)
	}
	if s.beforeInsert != nil {
		s.beforeInsert()
	}
	for try := 1; ; try++ {
		_, err = s.pool.ExecContext(ctx, insertIfAbsent[s.dialect], name, version, m.wrapped)
		if err == nil {
			return m, nil
		}
		if try == insertTries || !errors.Is(keystore.ConflictErr(err), keystore.ErrConflict) {
			m.clear()
			return nil, fmt.Errorf("envelope: create blind-index key %q version %d in %s: %w", name, version, Table, err)
		}
	}
}

// retire marks one version retired.
func (s *Store) retire(ctx context.Context, name string, version int) error {
	q := fmt.Sprintf("UPDATE %s SET retired = %s WHERE name = %s AND version = %s", Table, s.ph(1), s.ph(2), s.ph(3))
	if _, err := s.pool.ExecContext(ctx, q, true, name, version); err != nil {
		return fmt.Errorf("envelope: retire blind-index key %q version %d in %s: %w", name, version, Table, err)
	}
	return nil
}

// Names returns the name of every index that has a key, retired or not,
// sorted.
func (s *Store) Names(ctx context.Context) ([]string, error) {
	if s.err != nil {
		return nil, s.err
	}
	rows, err := s.pool.QueryContext(ctx, "SELECT DISTINCT name FROM "+Table)
	if err != nil {
		return nil, fmt.Errorf("envelope: read %s: %w", Table, err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("envelope: read %s: %w", Table, err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("envelope: read %s: %w", Table, err)
	}
	slices.Sort(names)
	return names, rows.Close()
}
