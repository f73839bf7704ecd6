package envelope

import (
	"errors"
	"time"
)

// Observer receives counts of what the plugin does, for an app to export
// as metrics (the otelmetric module turns them into OpenTelemetry
// instruments). Set it in Config.Observer; nil observes nothing and costs
// nothing.
//
// The plugin calls an Observer from many goroutines at once: it must be
// safe for concurrent use, and quick. Its arguments name models, fields,
// events and operations only: never an owner, a value, a key or a
// plaintext.
type Observer interface {
	// ValuesEncrypted reports n values of model's field sealed for one
	// write statement (or for the values a self-owned insert writes after
	// it), once per field and statement.
	ValuesEncrypted(model, field string, n int)

	// ValuesDecrypted reports n values of model's field opened by one
	// query, once per field and statement.
	ValuesDecrypted(model, field string, n int)

	// ValuesFailed reports n values of model's field (field is "" when
	// the error names no field) that a statement could not write or read.
	// kind is the sentinel the error wraps: [ErrDecrypt], [ErrShredded],
	// [ErrNoKey], [ErrNoOwner], [ErrUnsafe], [ErrDuplicate] or
	// [ErrConflict]; nil for an error of none of these kinds.
	ValuesFailed(model, field string, kind error, n int)

	// DEKCache reports n events of the DEK cache: "hit" and "miss" (an
	// owner's DEK found in the cache or not), "load" (a DEK read from the
	// profile table and opened) and "create" (an owner given a new DEK).
	DEKCache(event string, n int)

	// MasterKeyCall reports one call to the master keyring — a Fernet
	// master key or a KMS — that took d: op is "decrypt" (opening a stored
	// DEK or blind-index key) or "encrypt" (sealing a new one); err is its
	// error, nil on success.
	MasterKeyCall(op string, d time.Duration, err error)
}

// kinds are the sentinels ValuesFailed reports, the more specific first:
// errors.Is holds for the first that matches.
var kinds = []error{ErrShredded, ErrNoKey, ErrNoOwner, ErrUnsafe, ErrDuplicate, ErrConflict, ErrDecrypt}

// errorKind returns the sentinel err wraps, or nil.
func errorKind(err error) error {
	for _, k := range kinds {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}

// fieldKey names one encrypted field of one model (or projection) for
// the counts of a statement.
type fieldKey struct {
	m  *modelMeta
	ef *encField
}

// fieldCounts are a statement's counts per field; nil when the plugin has
// no observer, so that counting costs a nil check.
type fieldCounts map[fieldKey]int

// add adds n to field ef of m, unless c is nil.
func (c fieldCounts) add(m *modelMeta, ef *encField, n int) {
	if c != nil && n > 0 {
		c[fieldKey{m, ef}] += n
	}
}

// merge adds o's counts to c.
func (c fieldCounts) merge(o fieldCounts) {
	for k, n := range o {
		c[k] += n
	}
}

// counts returns empty counts for a statement, or nil without an
// observer.
func (p *Plugin) counts() fieldCounts {
	if p.obs == nil {
		return nil
	}
	return fieldCounts{}
}

// observeDecrypted reports a query's counts.
func (p *Plugin) observeDecrypted(c fieldCounts) {
	for k, n := range c {
		p.obs.ValuesDecrypted(k.m.name, k.ef.f.Name, n)
	}
}

// observeEncrypted reports a write statement's items, counted per field.
func (p *Plugin) observeEncrypted(items []item) {
	if p.obs == nil || len(items) == 0 {
		return
	}
	c := fieldCounts{}
	for i := range items {
		c.add(items[i].m, items[i].enc, 1)
	}
	for k, n := range c {
		p.obs.ValuesEncrypted(k.m.name, k.ef.f.Name, n)
	}
}

// addErr adds err to the statement, reporting the FieldErrors it holds.
func (p *Plugin) addErr(db interface{ AddError(error) error }, err error) {
	p.observeFailures(err)
	db.AddError(err)
}

// observeFailures reports the FieldErrors err holds (itself, or the
// members of the errorList a statement adds), counted per model, field
// and kind.
func (p *Plugin) observeFailures(err error) {
	if p.obs == nil || err == nil {
		return
	}
	type key struct {
		model, field string
		kind         error
	}
	var counts map[key]int
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case *FieldError:
			if counts == nil {
				counts = map[key]int{}
			}
			counts[key{e.Model, e.Field, errorKind(e.Err)}]++
		case errorList:
			for _, x := range e {
				walk(x)
			}
		}
	}
	walk(err)
	for k, n := range counts {
		p.obs.ValuesFailed(k.model, k.field, k.kind, n)
	}
}

// observeItemsFailed reports every field of items as failed with kind,
// for an error of the whole statement (no master key) that names none.
func (p *Plugin) observeItemsFailed(items []item, err error) {
	if p.obs == nil {
		return
	}
	c := fieldCounts{}
	for i := range items {
		c.add(items[i].m, items[i].enc, 1)
	}
	kind := errorKind(err)
	for k, n := range c {
		p.obs.ValuesFailed(k.m.name, k.ef.f.Name, kind, n)
	}
}
