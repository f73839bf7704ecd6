package envelope

import (
	"context"
	"fmt"
	"reflect"

	"gorm.io/gorm/schema"
)

// Serializer is the GORM serializer registered as "envelope". Fields tagged
// gorm:"serializer:envelope" (string, *string or []byte) are stored as
// Fernet tokens under their owner's DEK.
//
// The serializer holds no state and never queries the database: the
// plugin's callbacks resolve keys and encrypt before a write, and decrypt
// after a query. Value only hands over the token prepared for the value, so
// it is pure and cannot fail on a statement the callbacks accepted; Scan
// stores the raw column value for the after-query decryption.
type Serializer struct{}

// Scan stores the raw column value (a token, or NULL) in the field.
func (Serializer) Scan(ctx context.Context, field *schema.Field, dst reflect.Value, dbValue any) error {
	var rs *readState
	if ss := stateIn(ctx); ss != nil {
		rs = ss.read
	}
	if rs != nil && rs.scan(field, dst, dbValue) {
		return nil
	}
	fv := field.ReflectValueOf(ctx, dst)
	var tok string
	var err error
	switch v := dbValue.(type) {
	case nil:
		fv.Set(reflect.Zero(field.FieldType))
	case string:
		tok, err = setRaw(fv, field, v, nil)
	case []byte:
		tok, err = setRaw(fv, field, "", v)
	default:
		err = fmt.Errorf("envelope: %s.%s: unexpected column value type %T", field.Schema.Name, field.Name, dbValue)
	}
	if err != nil {
		return err
	}
	if rs != nil {
		rs.scanned(field, dst, tok)
	}
	return nil
}

// setRaw stores the column value (s, or b when not nil) in the field and
// returns the stored text; for a []byte field it shares the field's memory
// (it is only read).
func setRaw(fv reflect.Value, field *schema.Field, s string, b []byte) (string, error) {
	switch field.FieldType {
	case typeString, typeStringPtr:
		if b != nil {
			s = string(b)
		}
		if field.FieldType == typeString {
			fv.SetString(s)
		} else {
			ps := new(string) // only this case allocates: s itself does not escape
			*ps = s
			fv.Set(reflect.ValueOf(ps))
		}
		return s, nil
	case typeBytes:
		if b != nil {
			b = append([]byte(nil), b...) // the driver may reuse its buffer
		} else {
			b = []byte(s)
		}
		fv.SetBytes(b)
		if len(b) == 0 {
			return "", nil
		}
		return bytesString(b), nil
	}
	return "", fmt.Errorf("envelope: %s.%s: serializer:envelope supports string, *string and []byte, not %s", field.Schema.Name, field.Name, field.FieldType)
}

// Value returns the token that the plugin's before-write callback prepared
// for this value, or nil for a nil pointer or nil []byte.
//
// Value never hands a driver an error that a driver could print with the
// plaintext (pgx formats a failed argument with %#v, which shows GORM's
// serializer wrapper and the field's value): when it must refuse, it
// returns its error only to database/sql's argument conversion, whose
// message names the argument's position alone, and otherwise a value that
// no database stores (see refuse).
func (Serializer) Value(ctx context.Context, field *schema.Field, dst reflect.Value, value any) (any, error) {
	var st *writeState
	if ss := stateIn(ctx); ss != nil {
		st = ss.write
	}
	plain, isNil, ok := plainOf(value)
	if !ok {
		return refuse(st, fmt.Errorf("%w: %s.%s: unsupported value type %T", ErrUnsafe, field.Schema.Name, field.Name, value))
	}
	if isNil {
		return nil, nil
	}
	if st == nil {
		return refuse(nil, fmt.Errorf("%w: %s.%s: an encrypted value can only be written by Create, Save or Update of its model on a *gorm.DB with the envelope plugin (db.Use), and compared in no query (see docs/security-model.md)", ErrUnsafe, field.Schema.Name, field.Name))
	}
	if v, ok := st.placeholder(field, dst); ok {
		return v, nil
	}
	tok, owner, ok, err := st.token(field, dst, plain)
	if err != nil {
		return refuse(st, err)
	}
	if !ok {
		return refuse(st, fmt.Errorf("%w: %s.%s: value was not prepared for owner %v", ErrNoOwner, field.Schema.Name, field.Name, owner))
	}
	return tok, nil
}

// refusal is the value Value returns in place of an error when the error
// could reach a driver that prints its arguments. It is no driver.Value,
// so database/sql refuses it; a driver that takes any value (pgx) sends
// it, and PostgreSQL refuses its NUL byte in any text column.
type refusal string

const refused refusal = "\x00envelope: write refused"

// refuse returns err where it is safe to, else the refusal value; the
// statement's after-write callback then reports err itself.
func refuse(st *writeState, err error) (any, error) {
	if st != nil {
		st.refuse(err)
	} else {
		logRefusal(err)
	}
	if convertingArgs() {
		return nil, err
	}
	return refused, nil
}

// plainOf extracts the plaintext of a field value.
func plainOf(v any) (plain string, isNil, ok bool) {
	switch x := v.(type) {
	case nil:
		return "", true, true
	case string:
		return x, false, true
	case *string:
		if x == nil {
			return "", true, true
		}
		return *x, false, true
	case []byte:
		if x == nil {
			return "", true, true
		}
		return string(x), false, true
	}
	return "", false, false
}
