package keystore

import (
	"database/sql"
	"runtime"
	"testing"
	"time"
)

// DEKs recorded in a transaction are served to it alone, for at most the
// cache's lifetime; once the transaction wrote profiles nothing is served
// for the rest of its life, even after that lifetime or when the cache is
// full; a forgotten owner is dropped everywhere; a pool that is not a
// known transaction type is not cached.
func TestTxKeysLifetimeAndBound(t *testing.T) {
	now := time.Unix(1000, 0)
	tk := newTxKeys(2, 10, time.Minute)
	tk.now = func() time.Time { return now }
	k := &Key{}
	a, b, c := &sql.Tx{}, &sql.Tx{}, &sql.Tx{}
	tk.record(a, map[any]*Key{int64(1): k})
	if got, ok := get(tk, a, int64(1)); !ok || got != k {
		t.Fatal("recorded DEK not served")
	}
	if _, ok := get(tk, b, int64(1)); ok {
		t.Fatal("DEK served to another transaction")
	}
	tk.record(b, map[any]*Key{int64(1): k})
	tk.record(c, map[any]*Key{int64(1): k}) // over the bound: not kept
	if _, ok := get(tk, c, int64(1)); ok || len(tk.m) != 2 {
		t.Fatalf("%d entries kept, bound is 2", len(tk.m))
	}
	tk.disable(c) // kept although the cache is full
	tk.record(c, map[any]*Key{int64(2): k})
	if _, ok := get(tk, c, int64(2)); ok {
		t.Fatal("DEK served after the transaction wrote profiles")
	}
	now = now.Add(2 * time.Minute)
	if _, ok := get(tk, a, int64(1)); ok {
		t.Fatal("DEK served after its lifetime")
	}
	tk.record(c, map[any]*Key{int64(2): k})
	if _, ok := get(tk, c, int64(2)); ok {
		t.Fatal("a transaction that wrote profiles was served DEKs after the lifetime")
	}
	tk.record(a, map[any]*Key{int64(3): k})
	tk.forget(int64(3))
	if _, ok := get(tk, a, int64(3)); ok {
		t.Fatal("forgotten DEK served")
	}
	tk.record(nil, map[any]*Key{int64(4): k})
	if _, ok := get(tk, nil, int64(4)); ok {
		t.Fatal("a nil pool was cached")
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(b)
	runtime.KeepAlive(c)
}

// A transaction keeps at most per DEKs; with the DEK cache off
// (Config.CacheSize < 0) it keeps none.
func TestTxKeysPerTransactionBound(t *testing.T) {
	tk := newTxKeys(10, 3, time.Minute)
	a := &sql.Tx{}
	loaded := map[any]*Key{}
	for o := range 5 {
		loaded[int64(o)] = &Key{}
	}
	tk.record(a, loaded)
	served := 0
	for o := range 5 {
		if _, ok := get(tk, a, int64(o)); ok {
			served++
		}
	}
	if served != 3 {
		t.Fatalf("%d DEKs kept for one transaction, bound is 3", served)
	}

	off := New(nil, nil, nil, -1, time.Minute, false)
	off.tx.record(a, loaded)
	if _, ok := get(off.tx, a, int64(0)); ok {
		t.Fatal("a transaction kept a DEK with the cache off")
	}
	runtime.KeepAlive(a)
}

// get is fill for one owner.
func get(tk *txKeys, pool *sql.Tx, o any) (*Key, bool) {
	keys := map[any]*Key{}
	rest := tk.fill(pool, []any{o}, keys)
	return keys[o], len(rest) == 0
}

// An entry goes away once its transaction object is collected.
func TestTxKeysDroppedWithTransaction(t *testing.T) {
	tk := newTxKeys(10, 10, time.Minute)
	func() {
		tx := &sql.Tx{}
		tk.disable(tx)
		tk.record(&sql.Tx{}, map[any]*Key{int64(1): {}})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		tk.mu.Lock()
		n := len(tk.m)
		tk.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries left after their transactions were collected", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
