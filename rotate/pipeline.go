package rotate

import (
	"context"
	"slices"
	"sync"

	"gorm.io/gorm"
)

// pgWriters is how many batches are written at once on PostgreSQL. A batch
// UPDATE is bound by the server's work per row (heap and index writes) and
// by the round trips of its statement and commit; a few backends writing
// disjoint batches keep the server busy while each waits. On a 2-core
// machine with a local server 2, 3 and 4 measure alike (65-75k DEKs/s);
// 3 leaves room for a server across a network.
const pgWriters = 3

// writers returns how many batches may be written concurrently. SQLite has
// one writer at a time, and a caller's transaction is one connection, so
// both are processed strictly one batch after another. On MariaDB 10.11
// one writer and three measured alike (about 20k DEKs/s on a loaded 2-core
// machine), so MySQL keeps to one: fewer rows locked at once.
func (t *target) writers() int {
	if _, inTx := t.pool().(gorm.TxCommitter); inTx {
		return 0
	}
	if t.dialect == "postgres" {
		return pgWriters
	}
	return 0
}

// pipeline reads the table batch by batch, does each batch's crypto, and
// hands it to write; merge receives each batch's size and outcome on the
// calling goroutine. With writers() > 0, reading and crypto of the next
// batches overlap the writes of earlier ones, and that many batches are
// written at once; each batch is still its own transaction, so the order in
// which they commit does not matter. At most 2*writers()+1 batches are in
// memory. The first error stops the pipeline and is returned.
func (t *target) pipeline(ctx context.Context, c *cryptor,
	write func(context.Context, []row, []item) (Result, error),
	merge func(n int, d Result)) error {
	n := t.writers()
	if n == 0 {
		return t.scan(ctx, "", func(rows []row) error {
			d, err := write(ctx, rows, c.process(ctx, rows))
			merge(len(rows), d)
			return err
		})
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type job struct {
		rows  []row
		items []item
	}
	type outcome struct {
		n   int
		d   Result
		err error
	}
	jobs := make(chan job, n)
	outcomes := make(chan outcome, n)
	var scanErr error
	go func() {
		defer close(jobs)
		scanErr = t.scan(ctx, "", func(rows []row) error {
			rows = slices.Clone(rows)
			select {
			case jobs <- job{rows, c.process(ctx, rows)}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for j := range jobs {
				if ctx.Err() != nil {
					continue // drain
				}
				d, err := write(ctx, j.rows, j.items)
				outcomes <- outcome{len(j.rows), d, err}
			}
		})
	}
	go func() {
		wg.Wait()
		close(outcomes)
	}()
	var firstErr error
	for o := range outcomes {
		merge(o.n, o.d)
		if o.err != nil && firstErr == nil {
			firstErr = o.err
			cancel()
		}
	}
	// outcomes is closed: the writers are done, and so is the scanner,
	// which closed jobs first.
	if firstErr != nil {
		return firstErr
	}
	return scanErr
}
