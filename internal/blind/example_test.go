package blind_test

import (
	"fmt"

	"github.com/gorm-envelope/envelope/internal/blind"
)

func ExampleKey_Value() {
	root := make([]byte, 32) // an owner's DEK, decoded from its 44-character text
	for i := range root {
		root[i] = byte(i)
	}
	key, err := blind.NewKey(root, "email")
	if err != nil {
		panic(err)
	}
	t, err := blind.ParseTransform("trim,lower")
	if err != nil {
		panic(err)
	}
	stored := key.Value(1, 12, t.Apply(" MiXeD@Example.COM "))
	v, ok := blind.Version(stored)
	fmt.Println(stored, v, ok)
	// Output: 1:7f20 1 true
}
