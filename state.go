package envelope

import (
	"context"

	"gorm.io/gorm"
)

// Per-statement state.
//
// Everything the plugin keeps for one statement lives in one stmtState,
// which the first hook that needs it puts into the statement's context
// (ensureState) and the statement's last hook takes out again (endState),
// putting back the context it replaced — the way GORM's opentelemetry
// plugin restores its parent context. The serializer sees only the
// context; every hook reaches the state the same way, with stateOf.
//
// A statement run from inside another (the key store's lookups, the
// self-owned rows' sealing, GORM's preloads) inherits the context: stateOf
// returns a state only to the statement it belongs to, and a preload
// statement reports its read errors to the sink of the statement it
// preloads for.
type stmtState struct {
	stmt   *gorm.Statement
	parent context.Context // the context before the state

	write   *writeState  // the values a write seals, for the serializer (write.go)
	edits   []edit       // map and clause values replaced, put back by afterWrite
	read    *readState   // a query's pipeline (pipeline.go)
	sink    *preloadSink // where read errors wait for the preloads (read.go)
	ownSink bool         // the sink is this statement's, not inherited
	pending pendingKeys  // DEKs of a transaction begun for the statement (keys.go)
	started bool         // the plugin began that transaction (selfowned.go)
	matches []filterWant // matches its rows are checked against (match.go)
	restore []func()     // put back what the statement's hooks replaced
}

type stateKey struct{}

// stateOf returns the statement's own state, or nil.
func stateOf(db *gorm.DB) *stmtState {
	if st := stateIn(db.Statement.Context); st != nil && st.stmt == db.Statement {
		return st
	}
	return nil
}

// stateIn returns the state in ctx, whichever statement it belongs to.
func stateIn(ctx context.Context) *stmtState {
	if ctx == nil {
		return nil
	}
	st, _ := ctx.Value(stateKey{}).(*stmtState)
	return st
}

// ensureState returns the statement's state, putting a new one into its
// context if it has none. A new state inherits the read-error sink of the
// state its context holds, if any.
func ensureState(db *gorm.DB) *stmtState {
	if st := stateOf(db); st != nil {
		return st
	}
	ctx := db.Statement.Context
	st := &stmtState{stmt: db.Statement, parent: ctx}
	if outer := stateIn(ctx); outer != nil {
		st.sink = outer.sink
	}
	db.Statement.Context = context.WithValue(ctx, stateKey{}, st)
	return st
}

// endState takes the statement's state out of its context, and returns it
// (nil if it had none).
func endState(db *gorm.DB) *stmtState {
	st := stateOf(db)
	if st != nil {
		db.Statement.Context = st.parent
		for _, f := range st.restore {
			f()
		}
	}
	return st
}

// internalKey marks the context of the plugin's own statements that write
// tokens by table name (EncryptExisting, the self-owned rows' sealing).
type internalKey struct{}

// internal returns db in a new session marked as the plugin's own.
func internal(db *gorm.DB) *gorm.DB {
	ctx := db.Statement.Context
	if ctx == nil {
		ctx = context.Background()
	}
	return db.Session(&gorm.Session{NewDB: true, Context: context.WithValue(ctx, internalKey{}, true)})
}

// isInternal reports whether the statement is one of the plugin's own.
func isInternal(db *gorm.DB) bool {
	v, _ := db.Statement.Context.Value(internalKey{}).(bool)
	return v
}

// endStatement is the last hook of statements no other hook ends.
func endStatement(db *gorm.DB) { endState(db) }
