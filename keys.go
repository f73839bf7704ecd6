package envelope

import (
	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
)

// The statement's side of the key store (internal/keystore): which
// transaction it runs in, and the keys a transaction begun for it loaded,
// cached once that transaction has committed (afterWrite).

// ownerKey is one owner's DEK as the key store holds it.
type ownerKey = keystore.Key

// pendingKeys are DEKs loaded or created inside a transaction this
// statement began: cached only once it commits.
type pendingKeys map[any]*ownerKey

// modeOf tells the key store what transaction the statement runs in.
func modeOf(db *gorm.DB) keystore.Mode {
	if _, ok := db.Statement.ConnPool.(gorm.TxCommitter); !ok {
		return keystore.None
	}
	if startedTx(db) {
		return keystore.Own
	}
	return keystore.Foreign
}

// resolve returns the DEK of every owner (keystore.Store.Resolve), and
// keeps what a transaction begun for the statement loaded for afterWrite.
func (p *Plugin) resolve(db *gorm.DB, owners []any, create bool) (map[any]*ownerKey, map[any]error, error) {
	keys, errs, pending, err := p.store.Resolve(db, func() keystore.Mode { return modeOf(db) }, owners, create)
	if len(pending) > 0 {
		ss := ensureState(db)
		if ss.pending == nil {
			ss.pending = pendingKeys{}
		}
		for o, k := range pending {
			ss.pending[o] = k
		}
	}
	return keys, errs, err
}
