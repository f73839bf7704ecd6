package rotate

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"gorm.io/gorm"
)

// row is one profile as read: its primary key, owner and encrypted DEK;
// or one blind-index key: its primary key, index name, version and
// wrapped key.
type row struct {
	id      any    // int64 or string
	owner   any    // as scanned; formatted only for a Failure
	version any    // an index key's version; nil for a profile
	enc     []byte // nil when the column is NULL
}

// pool returns the connection pool (or transaction) to run statements on.
// Statements go to it directly rather than through GORM's callbacks: only
// the DEK column is read and written, and no plugin hook may interfere.
func (t *target) pool() gorm.ConnPool { return t.db.Statement.ConnPool }

// selectList is the column list of a batch read.
func (t *target) selectList() string {
	owner := "NULL"
	if t.owner != "" {
		owner = t.owner
	}
	if t.version != "" {
		owner += ", " + t.version
	}
	return t.id + ", " + owner + ", " + t.dek
}

// emptyCond is true for a NULL or zero-length DEK column, on every dialect.
func (t *target) emptyCond(col string) string {
	return "(" + col + " IS NULL OR length(" + col + ") = 0)"
}

// scan reads the table in primary key order, batch by batch (keyset
// pagination: WHERE id > last ORDER BY id LIMIT n), and calls fn with each
// batch. The rows are closed before fn runs, so fn may open a transaction
// even on a pool of one connection. filter, if not empty, is an extra SQL
// condition. The slice passed to fn is reused for the next batch.
func (t *target) scan(ctx context.Context, filter string, fn func([]row) error) error {
	var (
		buf   = make([]row, 0, t.batchSize)
		last  any
		first = true
	)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var conds []string
		var args []any
		if filter != "" {
			conds = append(conds, filter)
		}
		if !first {
			conds = append(conds, t.id+" > "+t.ph(1))
			args = append(args, last)
		}
		q := "SELECT " + t.selectList() + " FROM " + t.table
		if len(conds) > 0 {
			q += " WHERE " + strings.Join(conds, " AND ")
		}
		q += fmt.Sprintf(" ORDER BY %s LIMIT %d", t.id, t.batchSize)
		var err error
		buf, err = t.query(ctx, t.pool(), buf[:0], q, args...)
		if err != nil {
			return err
		}
		if len(buf) == 0 {
			return nil
		}
		if err := fn(buf); err != nil {
			return err
		}
		if len(buf) < t.batchSize {
			return nil
		}
		last, first = buf[len(buf)-1].id, false
	}
}

// reread reads the given profiles again by primary key.
func (t *target) reread(ctx context.Context, ids []any) ([]row, error) {
	return t.rereadIn(ctx, t.pool(), ids)
}

// rereadIn is reread on conn (a batch's transaction).
func (t *target) rereadIn(ctx context.Context, conn gorm.ConnPool, ids []any) ([]row, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var b strings.Builder
	b.WriteString("SELECT " + t.selectList() + " FROM " + t.table + " WHERE " + t.id + " IN (")
	for i := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(t.ph(i + 1))
	}
	b.WriteString(") ORDER BY " + t.id)
	return t.query(ctx, conn, nil, b.String(), ids...)
}

func (t *target) query(ctx context.Context, conn gorm.ConnPool, buf []row, q string, args ...any) ([]row, error) {
	rows, err := conn.QueryContext(ctx, q, args...)
	if err != nil {
		return buf, fmt.Errorf("read %s: %w", t.table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, owner, version any
			enc                []byte
		)
		var err error
		if t.version != "" {
			err = rows.Scan(&id, &owner, &version, &enc)
		} else {
			err = rows.Scan(&id, &owner, &enc)
		}
		if err != nil {
			return buf, fmt.Errorf("read %s: %w", t.table, err)
		}
		buf = append(buf, row{id: normID(id), owner: owner, version: version, enc: enc})
	}
	if err := rows.Err(); err != nil {
		return buf, fmt.Errorf("read %s: %w", t.table, err)
	}
	return buf, rows.Close()
}

// normID makes a scanned primary key comparable and reusable as a bind
// argument.
func normID(v any) any {
	switch x := v.(type) {
	case []byte:
		return string(x)
	case int32:
		return int64(x)
	case int:
		return int64(x)
	case uint32:
		return int64(x)
	case uint64: // MySQL's BIGINT UNSIGNED, read without bind parameters
		if x <= math.MaxInt64 {
			return int64(x)
		}
	case uint:
		if uint64(x) <= math.MaxInt64 {
			return int64(x)
		}
	}
	return v
}

func ownerText(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case []byte:
		return string(x)
	case string:
		return x
	}
	return fmt.Sprint(v)
}

// bindingOwner is a scanned owner as a bound DEK names it, the way the
// plugin writes it: an integer in decimal (an unsigned one above the
// int64 range as the plugin's int64 holds it), a string as it is.
func bindingOwner(v any) string {
	switch x := v.(type) {
	case int64:
		return strconv.FormatInt(x, 10)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int:
		return strconv.FormatInt(int64(x), 10)
	case uint64:
		return strconv.FormatInt(int64(x), 10)
	case uint32:
		return strconv.FormatUint(uint64(x), 10)
	case uint:
		return strconv.FormatInt(int64(x), 10)
	}
	return ownerText(v)
}

func idText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// count returns the number of rows in the table (with an optional filter).
func (t *target) count(ctx context.Context, filter string) (int, error) {
	q := "SELECT count(*) FROM " + t.table
	if filter != "" {
		q += " WHERE " + filter
	}
	var n int64
	rows, err := t.pool().QueryContext(ctx, q)
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", t.table, err)
	}
	defer rows.Close()
	if rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, fmt.Errorf("count %s: %w", t.table, err)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("count %s: %w", t.table, err)
	}
	return int(n), rows.Close()
}
