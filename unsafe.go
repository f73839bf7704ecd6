package envelope

import (
	"reflect"
	"unsafe"
)

// Every use of package unsafe in the plugin is here: direct reads and
// writes of a model's fields at their offsets (the fast path of reads and
// writes; meta_internal_test.go checks them against the reflect path),
// and views of a string's or a []byte's memory as the other type, where
// the memory is never written after.

// addr is the address of a struct of a model.
type addr = unsafe.Pointer

// bytesString returns b's memory as a string; b must not change after.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// stringBytes returns s's memory as a []byte, to be read only.
func stringBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// sameString reports whether a and b are the same memory, not only equal.
func sameString(a, b string) bool {
	return len(a) == len(b) && (a == "" || unsafe.StringData(a) == unsafe.StringData(b))
}

// setStringAt stores s in the string field at offset off of the struct at p.
func setStringAt(p addr, off uintptr, s string) { *(*string)(unsafe.Add(p, off)) = s }

// textAt returns the stored text of the field in the struct at p ("" for
// NULL or empty); for []byte it shares the field's memory.
func (ef *encField) textAt(p unsafe.Pointer) string {
	q := unsafe.Add(p, ef.off)
	switch ef.kind {
	case kindString:
		return *(*string)(q)
	case kindStringPtr:
		if sp := *(**string)(q); sp != nil {
			return *sp
		}
	case kindBytes:
		if b := *(*[]byte)(q); len(b) > 0 {
			return unsafe.String(&b[0], len(b))
		}
	}
	return ""
}

// plainAt returns the value to encrypt of the field in the struct at p,
// and whether it is nil (not written encrypted).
func (ef *encField) plainAt(p unsafe.Pointer) (string, bool) {
	q := unsafe.Add(p, ef.off)
	switch ef.kind {
	case kindString:
		return *(*string)(q), false
	case kindStringPtr:
		if sp := *(**string)(q); sp != nil {
			return *sp, false
		}
	case kindBytes:
		if b := *(*[]byte)(q); b != nil {
			return string(b), false
		}
	}
	return "", true
}

// setAt stores msg in the field of the struct at p; a string shares msg.
func (ef *encField) setAt(p unsafe.Pointer, msg []byte) {
	q := unsafe.Add(p, ef.off)
	switch ef.kind {
	case kindString:
		*(*string)(q) = unsafe.String(unsafe.SliceData(msg), len(msg))
	case kindStringPtr:
		s := unsafe.String(unsafe.SliceData(msg), len(msg))
		*(**string)(q) = &s
	case kindBytes:
		*(*[]byte)(q) = msg
	}
}

// zeroAt sets the field of the struct at p to its zero value.
func (ef *encField) zeroAt(p unsafe.Pointer) {
	q := unsafe.Add(p, ef.off)
	switch ef.kind {
	case kindString:
		*(*string)(q) = ""
	case kindStringPtr:
		*(**string)(q) = nil
	case kindBytes:
		*(*[]byte)(q) = nil
	}
}

// offsetOf returns the offset of the field at index in struct type t, if
// no step of the path goes through a pointer.
func offsetOf(t reflect.Type, index []int) (uintptr, bool) {
	var off uintptr
	for _, i := range index {
		if _, viaPtr := structIndex(i); viaPtr || t.Kind() != reflect.Struct {
			return 0, false
		}
		f := t.Field(i)
		off += f.Offset
		t = f.Type
	}
	return off, true
}

// ownerReader returns a function reading an owner field of type t at
// offset off of a struct, normalised like normOwner; nil for other types.
func ownerReader(t reflect.Type, off uintptr) func(unsafe.Pointer) any {
	var u func(p unsafe.Pointer) uint64
	var i func(p unsafe.Pointer) int64
	switch t.Kind() {
	case reflect.Int:
		i = func(p unsafe.Pointer) int64 { return int64(*(*int)(p)) }
	case reflect.Int8:
		i = func(p unsafe.Pointer) int64 { return int64(*(*int8)(p)) }
	case reflect.Int16:
		i = func(p unsafe.Pointer) int64 { return int64(*(*int16)(p)) }
	case reflect.Int32:
		i = func(p unsafe.Pointer) int64 { return int64(*(*int32)(p)) }
	case reflect.Int64:
		i = func(p unsafe.Pointer) int64 { return *(*int64)(p) }
	case reflect.Uint:
		u = func(p unsafe.Pointer) uint64 { return uint64(*(*uint)(p)) }
	case reflect.Uint8:
		u = func(p unsafe.Pointer) uint64 { return uint64(*(*uint8)(p)) }
	case reflect.Uint16:
		u = func(p unsafe.Pointer) uint64 { return uint64(*(*uint16)(p)) }
	case reflect.Uint32:
		u = func(p unsafe.Pointer) uint64 { return uint64(*(*uint32)(p)) }
	case reflect.Uint64:
		u = func(p unsafe.Pointer) uint64 { return *(*uint64)(p) }
	case reflect.String:
		return func(p unsafe.Pointer) any {
			if s := *(*string)(unsafe.Add(p, off)); s != "" {
				return s
			}
			return nil
		}
	default:
		return nil
	}
	if i != nil {
		return func(p unsafe.Pointer) any {
			if n := i(unsafe.Add(p, off)); n != 0 {
				return n
			}
			return nil
		}
	}
	return func(p unsafe.Pointer) any {
		if n := u(unsafe.Add(p, off)); n != 0 {
			return int64(n)
		}
		return nil
	}
}

// base returns the address of struct v (or of the struct v points to) if
// it is addressable and of the model's type, so that direct fields can be
// read and written at an offset; else nil.
func (m *modelMeta) base(v reflect.Value) unsafe.Pointer {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Type() != m.schema.ModelType || !v.CanAddr() {
		return nil
	}
	return v.Addr().UnsafePointer()
}
