package envelope_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// Large results are decrypted on several cores with the same values and
// the same error, in row order, as a serial decryption.
func TestParallelDecryptDeterministic(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	rows := make([]Credential, 3000)
	for i := range rows {
		rows[i] = Credential{UserID: uint(1 + i%37), Facility: fmt.Sprint(i), Password: fmt.Sprint("pw-", i)}
	}
	must(t, db.CreateInBatches(&rows, 500).Error)
	for _, i := range []int{5, 1700, 2999} {
		must(t, db.Exec("UPDATE credentials SET password = ? WHERE id = ?", "not-a-token", rows[i].ID).Error)
	}
	read := func(min int) ([]Credential, error) {
		defer envelope.SetParallelMinForTest(min)()
		var out []Credential
		err := db.Order("id").Find(&out).Error
		return out, err
	}
	serial, errS := read(1 << 30)
	parallel, errP := read(1)
	if !errors.Is(errP, envelope.ErrDecrypt) || errS == nil || errS.Error() != errP.Error() {
		t.Fatalf("errors differ:\nserial:   %v\nparallel: %v", errS, errP)
	}
	for i := range serial {
		if serial[i].Password != parallel[i].Password {
			t.Fatalf("row %d: %q vs %q", i, serial[i].Password, parallel[i].Password)
		}
		want := fmt.Sprint("pw-", i)
		if i == 5 || i == 1700 || i == 2999 {
			want = ""
		}
		if parallel[i].Password != want {
			t.Fatalf("row %d: %q, want %q", i, parallel[i].Password, want)
		}
	}
}
