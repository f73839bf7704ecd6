package bound_test

import (
	"fmt"

	"github.com/gorm-envelope/envelope/internal/bound"
)

func ExampleCipher_SealText() {
	var dek [bound.DEKSize]byte // an owner's DEK, decoded from its 44-character text
	for i := range dek {
		dek[i] = byte(i)
	}
	c := bound.New(dek)
	ctx := &bound.Context{Table: "users", Column: "email", Owner: "42", Row: "42"}
	text, err := c.SealText(nil, []byte("alice@example.com"), ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(text), bound.IsBound(text))

	plain, err := c.OpenText(nil, text, ctx)
	fmt.Printf("%s %v\n", plain, err)

	// The same value copied into another column does not open there.
	moved := &bound.Context{Table: "users", Column: "name", Owner: "42", Row: "42"}
	_, err = c.OpenText(nil, text, moved)
	fmt.Println(err)
	// Output:
	// 62 true
	// alice@example.com <nil>
	// invalid bound value
}
