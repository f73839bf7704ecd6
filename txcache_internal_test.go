package envelope

import (
	"database/sql"
	"testing"
	"time"
)

// The per-transaction DEKs expire with the cache's lifetime, are bounded
// in transactions, stop being served once a transaction wrote profiles,
// and are only kept for pools that are pointers.
func TestTxKeysLifetimeAndBound(t *testing.T) {
	now := time.Unix(1000, 0)
	tk := newTxKeys(2, time.Minute)
	tk.now = func() time.Time { return now }
	k := &ownerKey{}
	a, b, c := &sql.Tx{}, &sql.Tx{}, &sql.Tx{}
	tk.record(a, map[any]*ownerKey{int64(1): k})
	if got, ok := tk.get(a, int64(1)); !ok || got != k {
		t.Fatal("recorded DEK not served")
	}
	if _, ok := tk.get(b, int64(1)); ok {
		t.Fatal("DEK served to another transaction")
	}
	tk.record(b, map[any]*ownerKey{int64(1): k})
	tk.record(c, map[any]*ownerKey{int64(1): k})
	if len(tk.m) > 2 {
		t.Fatalf("%d transactions kept, bound is 2", len(tk.m))
	}
	tk.disable(c)
	if _, ok := tk.get(c, int64(1)); ok {
		t.Fatal("DEK served after the transaction wrote profiles")
	}
	tk.record(c, map[any]*ownerKey{int64(2): k})
	if _, ok := tk.get(c, int64(2)); ok {
		t.Fatal("DEK recorded after the transaction wrote profiles")
	}
	tk.record(a, map[any]*ownerKey{int64(3): k})
	now = now.Add(2 * time.Minute)
	if _, ok := tk.get(a, int64(3)); ok {
		t.Fatal("DEK served after its lifetime")
	}
	tk.record(a, map[any]*ownerKey{int64(3): k})
	tk.forget(int64(3))
	if _, ok := tk.get(a, int64(3)); ok {
		t.Fatal("forgotten DEK served")
	}
	if usablePool(nil) {
		t.Fatal("nil pool usable")
	}
}
