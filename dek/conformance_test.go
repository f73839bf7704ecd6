package dek_test

import (
	"testing"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/dek/dektest"
)

func TestFernetKeyConformance(t *testing.T) {
	var texts []string
	dektest.Run(t, dektest.Harness{
		New: func(t *testing.T) (dek.Encrypter, dek.Encrypter) {
			a, _ := dek.GenerateKey()
			b, _ := dek.GenerateKey()
			texts = append(texts, a, b)
			ka, err := dek.ParseKey(a)
			if err != nil {
				t.Fatal(err)
			}
			kb, err := dek.ParseKey(b)
			if err != nil {
				t.Fatal(err)
			}
			return ka, kb
		},
		Secret: func() []string { return texts },
	})
}
