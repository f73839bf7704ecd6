package envelope

// How Reseal reads one stored value: under the owner's DEK where it is
// (either format, either row binding), or through a Decoder.

import (
	"fmt"

	"github.com/gorm-envelope/envelope/internal/keystore"
)

// own opens v, a value of field ef in row rec, under the owner's DEK k.
// done reports that it opened: with plain nil when it is in the model's
// format where it is (nothing to do), else with its plaintext, to seal
// again.
func (r *resealer) own(k *ownerKey, ef *encField, rec resealRow, v string) (plain []byte, done bool, err error) {
	m := r.m
	owner, row := keystore.OwnerText(rec.owner), m.rowText(rec.id)
	bv := isBoundValue(v)
	if plain, err := m.openInto(nil, k, ef, owner, row, v, bv); err == nil {
		if bv == m.bound {
			clear(plain)
			return nil, true, nil
		}
		return nonNil(plain), true, nil
	}
	if !bv || owner == "" {
		return nil, false, nil
	}
	// A bound value sealed with the other row binding: without its row
	// (before the key was tagged envelope:"row"), or with it (after the
	// tag was removed).
	other := ""
	if !m.rowBound {
		other = keystore.OwnerText(normOwnerAny(asOwner(rec.id)))
		if other == "" {
			return nil, false, nil
		}
	}
	ctx := m.context(ef, owner, other)
	out, err := k.Bound().OpenText(nil, stringBytes(v), &ctx)
	if err != nil {
		return nil, false, nil
	}
	return nonNil(out), true, nil
}

// decode gives v to each decoder in turn, and returns the plaintext of the
// first that opens it; otherwise the error of the last that knew its
// scheme, or one saying that none did.
func (r *resealer) decode(v string) ([]byte, error) {
	var last error
	for _, d := range r.opts.From {
		plain, ok, err := d.Decode([]byte(v))
		if !ok {
			continue
		}
		if err == nil {
			return nonNil(plain), nil
		}
		clear(plain)
		last = err
	}
	if last != nil {
		return nil, last
	}
	if len(r.opts.From) == 0 {
		return nil, fmt.Errorf("%w: the value does not open under the owner's DEK", ErrDecrypt)
	}
	return nil, fmt.Errorf("%w: the value does not open under the owner's DEK, and no decoder knows it", ErrDecrypt)
}

// nonNil returns b, or an empty slice for nil: a change with a nil
// plaintext would read as no change.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
