package rotate

import (
	"context"
	"fmt"

	"gorm.io/gorm"
)

// change is one compare-and-swap of a DEK column: set it to new where the
// row still holds old, or, when old is nil, where it is still empty.
type change struct {
	id  any
	old []byte
	new []byte
}

// writer applies a batch of changes inside a transaction and reports, for
// each change, whether the row was written (false: the row changed or went
// away since it was read). perRow works on any database; pgBulk is the
// PostgreSQL form.
type writer interface {
	apply(ctx context.Context, conn gorm.ConnPool, cs []change, emptyOnly bool) ([]bool, error)
}

// writerFor picks the fastest writer for the dialect, the driver and the
// batch's key type.
func (t *target) writerFor(cs []change) writer {
	switch t.dialect {
	case "postgres":
		if t.pgx && allInt64(cs) {
			return pgBulk{t}
		}
	}
	// On SQLite, prepared per-row statements in the batch's transaction
	// measured about 3 times faster (140k rows/s) than one
	// UPDATE … FROM (VALUES …) per batch (47k rows/s).
	return perRow{t}
}

func allInt64(cs []change) bool {
	for _, c := range cs {
		if _, ok := c.id.(int64); !ok {
			return false
		}
	}
	return true
}

// Aliases used in the bulk statements, chosen not to collide with an
// app's table or column names.
const (
	aliasT = "envelope_t"
	aliasV = "envelope_v"
)

// pgBulk writes a whole batch with one statement on PostgreSQL:
//
//	UPDATE t AS envelope_t SET dek = envelope_v.new
//	FROM unnest($1::int8[], $2::bytea[], $3::bytea[]) AS envelope_v(id, old, new)
//	WHERE envelope_t.id = envelope_v.id AND envelope_t.dek = envelope_v.old
//	RETURNING envelope_t.id
//
// Three array parameters whatever the batch size: no bind-parameter limit,
// one plan, one round trip. It needs pgx (the driver of gorm.io/driver/postgres),
// which binds []int64 and [][]byte as arrays; other drivers get perRow.
type pgBulk struct{ t *target }

func (w pgBulk) apply(ctx context.Context, conn gorm.ConnPool, cs []change, emptyOnly bool) ([]bool, error) {
	t := w.t
	ids := make([]int64, len(cs))
	news := make([][]byte, len(cs))
	for i, c := range cs {
		ids[i], news[i] = c.id.(int64), c.new
	}
	var q string
	args := []any{ids, news}
	if emptyOnly {
		q = fmt.Sprintf("UPDATE %s AS %s SET %s = %s.vnew FROM unnest($1::int8[], $2::bytea[]) AS %s(vid, vnew) WHERE %s.%s = %s.vid AND %s RETURNING %s.%s",
			t.table, aliasT, t.dek, aliasV, aliasV, aliasT, t.id, aliasV, t.emptyCond(aliasT+"."+t.dek), aliasT, t.id)
	} else {
		olds := make([][]byte, len(cs))
		for i, c := range cs {
			olds[i] = c.old
		}
		args = append(args, olds)
		q = fmt.Sprintf("UPDATE %s AS %s SET %s = %s.vnew FROM unnest($1::int8[], $2::bytea[], $3::bytea[]) AS %s(vid, vnew, vold) WHERE %s.%s = %s.vid AND %s.%s = %s.vold RETURNING %s.%s",
			t.table, aliasT, t.dek, aliasV, aliasV, aliasT, t.id, aliasV, aliasT, t.dek, aliasV, aliasT, t.id)
	}
	return returned(ctx, conn, q, args, cs, t)
}

// returned runs an UPDATE … RETURNING id and marks which changes it wrote.
func returned(ctx context.Context, conn gorm.ConnPool, q string, args []any, cs []change, t *target) ([]bool, error) {
	rows, err := conn.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
	}
	defer rows.Close()
	written := make(map[any]bool, len(cs))
	for rows.Next() {
		var id any
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
		}
		written[normID(id)] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
	}
	done := make([]bool, len(cs))
	for i, c := range cs {
		done[i] = written[c.id]
	}
	return done, nil
}

// perRow writes each change with its own conditional UPDATE, prepared once
// per batch, inside the batch's transaction. It works on every dialect.
type perRow struct{ t *target }

func (w perRow) apply(ctx context.Context, conn gorm.ConnPool, cs []change, emptyOnly bool) ([]bool, error) {
	t := w.t
	var q string
	if emptyOnly {
		q = fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s = %s AND %s", t.table, t.dek, t.ph(1), t.id, t.ph(2), t.emptyCond(t.dek))
	} else {
		q = fmt.Sprintf("UPDATE %s SET %s = %s WHERE %s = %s AND %s = %s", t.table, t.dek, t.ph(1), t.id, t.ph(2), t.dek, t.ph(3))
	}
	stmt, err := conn.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
	}
	defer stmt.Close()
	done := make([]bool, len(cs))
	for i, c := range cs {
		args := []any{c.new, c.id}
		if !emptyOnly {
			args = append(args, c.old)
		}
		res, err := stmt.ExecContext(ctx, args...)
		if err != nil {
			return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, fmt.Errorf("rotate: update %s: %w", t.table, err)
		}
		done[i] = n > 0
	}
	return done, nil
}
