package indexkeys

import (
	"context"
	"fmt"

	"gorm.io/gorm"
)

// LiveTx is [Store.Live] inside the transaction tx, for SQLite, whose one
// writer is a transaction that has written: the table and the key are read
// and created in tx, and nothing is cached, since tx may roll back and take
// them with it (and with them the rows hashed under the key).
func (s *Store) LiveTx(ctx context.Context, tx *gorm.DB, name string, create bool) ([]Version, error) {
	if err := s.check(name, true); err != nil {
		return nil, err
	}
	t := &Store{pool: tx.Statement.ConnPool, dialect: s.dialect, keys: s.keys, ttl: -1, now: s.now, entries: map[string]*entry{}, obs: s.obs}
	ok, err := exists(ctx, t.pool, t.dialect)
	if err != nil {
		return nil, err
	}
	if !ok {
		if !create {
			return nil, nil
		}
		if _, err := t.pool.ExecContext(ctx, createTable[t.dialect]); err != nil {
			return nil, fmt.Errorf("envelope: create table %s: %w", Table, err)
		}
	}
	return t.fill(ctx, name, create)
}
