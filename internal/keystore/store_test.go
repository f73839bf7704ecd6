package keystore

import "testing"

// The opened cache's names tell owners apart whatever bytes follow, so
// the same stored DEK in two owners' rows is two entries.
func TestOpenedNameSeparatesOwners(t *testing.T) {
	for i, c := range []struct {
		o1, o2     any
		enc1, enc2 string
	}{
		{int64(1), int64(12), "2x", "x"},
		{int64(1), int64(2), "same", "same"},
		{"a", "a:b", ":bgA", "gA"},
		{int64(-1), "-", "1x", "x"},
	} {
		if a, b := openedName(c.o1, []byte(c.enc1)), openedName(c.o2, []byte(c.enc2)); a == b {
			t.Errorf("#%d: %v and %v share the name %q", i, c.o1, c.o2, a)
		}
	}
	if openedName(int64(7), []byte("x")) != openedName(int64(7), []byte("x")) {
		t.Error("one owner's bytes have two names")
	}
	for i, c := range []struct {
		owner any
		want  string
	}{
		{int64(42), "42"}, {int64(-3), "-3"}, {"42", "42"}, {"user@example.org", "user@example.org"},
	} {
		if got := OwnerText(c.owner); got != c.want {
			t.Errorf("#%d: OwnerText(%#v) = %q, want %q", i, c.owner, got, c.want)
		}
	}
}
