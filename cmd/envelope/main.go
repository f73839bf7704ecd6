// Command envelope is the operator's tool for gorm-envelope master keys: it
// makes keys, rotates every Profile DEK to a new master key, and reports
// which key opens how many DEKs.
//
// Usage:
//
//	envelope [global flags] <command> [flags]
//
// Commands:
//
//	keygen    print a new master key
//	rotate    re-encrypt every DEK under a new master key
//	status    count the DEKs each configured key opens
//	verify    open every DEK; fail if any cannot be opened
//	backfill  give a DEK to every profile without one
//
// The master keys come from DEK_ENCRYPTION_KEY (primary) and
// DEK_ENCRYPTION_KEY_PREVIOUS (comma-separated older keys), or, for rotate
// --env-file, from that file. See docs/key-management.md.
//
// This build keeps master keys in the environment only; for keys in a KMS
// (--kms-url), see docs/deployment.md.
package main

import (
	"os"

	"github.com/gorm-envelope/envelope/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, cli.Extensions{}))
}
