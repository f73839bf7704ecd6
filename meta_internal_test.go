package envelope

import (
	"reflect"
	"testing"
	"unsafe"
)

// ownerReader reads every supported owner type at its offset exactly as
// the reflection path (normOwner) does.
func TestOwnerReaderMatchesReflection(t *testing.T) {
	type inner struct {
		Pad  byte
		I8   int8
		I16  int16
		I32  int32
		I64  int64
		I    int
		U8   uint8
		U16  uint16
		U32  uint32
		U64  uint64
		U    uint
		S    string
		Name string
	}
	type row struct {
		A byte
		inner
	}
	values := []row{
		{},
		{inner: inner{I8: -3, I16: -300, I32: 70000, I64: 1 << 40, I: -9, U8: 200, U16: 60000, U32: 4e9, U64: 1 << 63, U: 7, S: "alice"}},
		{inner: inner{I8: 127, I64: -1, U64: 1, S: ""}},
	}
	rt := reflect.TypeOf(row{})
	it := reflect.TypeOf(inner{})
	for i := 1; i < it.NumField(); i++ {
		f := it.Field(i)
		off, ok := offsetOf(rt, []int{1, i})
		if !ok {
			t.Fatalf("%s: no offset", f.Name)
		}
		read := ownerReader(f.Type, off)
		if read == nil {
			t.Fatalf("%s: no reader", f.Name)
		}
		for _, v := range values {
			want := normOwner(reflect.ValueOf(v).Field(1).Field(i))
			if got := read(unsafe.Pointer(&v)); got != want {
				t.Fatalf("%s of %+v: read %#v, reflection %#v", f.Name, v, got, want)
			}
		}
	}
	if ownerReader(reflect.TypeOf(new(int)), 0) != nil {
		t.Fatal("a pointer owner must take the reflection path")
	}
	if _, ok := offsetOf(rt, []int{-2, 0}); ok {
		t.Fatal("a step through an embedded pointer has no fixed offset")
	}
}
