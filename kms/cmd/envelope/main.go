// Command envelope is the operator's tool for gorm-envelope master keys,
// built with KMS support: the core command (github.com/gorm-envelope/envelope/cmd/envelope)
// plus master keys held in AWS KMS, Google Cloud KMS, Azure Key Vault or
// HashiCorp Vault.
//
// Usage:
//
//	envelope [global flags] <command> [flags]
//
// A key URL (any key text containing "://", see package
// github.com/gorm-envelope/envelope/kms) may stand wherever a key does: in
// DEK_ENCRYPTION_KEY, in DEK_ENCRYPTION_KEY_PREVIOUS, and in --kms-url (or
// ENVELOPE_KMS_URL), which makes the KMS key the primary key with the
// configured keys as previous keys. So
//
//	envelope --driver postgres --kms-url 'awskms:///arn:aws:kms:...' rotate --env-file app.env
//
// moves every DEK from the environment's key to the KMS key. See
// docs/deployment.md.
package main

import (
	"os"

	"github.com/gorm-envelope/envelope/internal/cli"
	"github.com/gorm-envelope/envelope/kms"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, cli.Extensions{OpenKMS: kms.OpenEncrypter}))
}
