// Package cli is the envelope command: the operator's tool for
// gorm-envelope master keys. It makes keys, rotates every Profile DEK to a
// new master key, reports which key opens how many DEKs, and fills and
// rotates blind indexes.
//
// It lives here, not in package main, so that more than one build of the
// command can share it: cmd/envelope is the core build, and a build that
// links KMS support passes [Extensions] with OpenKMS set.
//
// Usage:
//
//	envelope [global flags] <command> [flags]
//
// Commands:
//
//	keygen      print a new master key
//	rotate      re-encrypt every DEK under a new master key
//	status      count the DEKs each configured key opens
//	verify      open every DEK; fail if any cannot be opened
//	backfill    give a DEK to every profile without one
//	index-plan  recommend a blind index length for a table
//	reindex     fill a table's blind indexes, or rotate their keys
//
// The master keys come from DEK_ENCRYPTION_KEY (primary) and
// DEK_ENCRYPTION_KEY_PREVIOUS (comma-separated older keys), or, for rotate
// --env-file, from that file. See docs/key-management.md.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/term"

	"github.com/gorm-envelope/envelope/dek"
)

// Extensions are what a build of the command adds to the core one. The
// zero value is the core build.
type Extensions struct {
	// OpenKMS opens a master key held in a KMS, named by a URL (any key
	// text containing "://"): the --kms-url key, and key URLs in
	// DEK_ENCRYPTION_KEY and DEK_ENCRYPTION_KEY_PREVIOUS. If the key it
	// returns is an io.Closer, it is closed when the command ends. Nil means
	// the build has no KMS support: --kms-url and key URLs are refused.
	OpenKMS func(ctx context.Context, url string) (dek.Encrypter, error)
}

// Main runs the envelope command with args (the arguments after the
// program name) and returns the process exit status: 0 success, 1 failure,
// 2 bad command line. It reads the process environment, and cancels the
// running command on SIGINT or SIGTERM.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer, ext Extensions) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := false
	if f, ok := stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	return run(ctx, args, &env{
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
		lookup: os.LookupEnv,
		tty:    tty,
		ext:    ext,
	})
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // the operation failed or found undecryptable DEKs
	exitUsage = 2 // bad command line
)

// env is the process's outside world, replaceable in tests.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookup         func(string) (string, bool)
	tty            bool // stderr is a terminal: draw a progress bar
	ext            Extensions
}

// usageError is a command-line mistake: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// errReported is returned by a command that already printed its error.
var errReported = errors.New("reported")

// command is one subcommand.
type command struct {
	name, args, short, long string
	database                bool // uses the database: --driver and --dsn
	offline                 bool // uses neither the database nor a key: no global flags
	flags                   func(fs *flag.FlagSet, o *opts)
	run                     func(ctx context.Context, e *env, o *opts) error
}

var commands = []*command{cmdKeygen, cmdRotate, cmdStatus, cmdVerify, cmdBackfill, cmdIndexPlan, cmdReindex, cmdReseal, cmdRekeyAll}

const globalHelp = `Usage: envelope [global flags] <command> [flags]

Commands:
%s
Global flags (also accepted after the command):
%s
The master keys come from DEK_ENCRYPTION_KEY (primary) and
DEK_ENCRYPTION_KEY_PREVIOUS (comma-separated older keys); rotate --env-file
reads and rewrites them in that file. See docs/key-management.md.
%s
Run "envelope <command> --help" for a command's flags.
`

func run(ctx context.Context, args []string, e *env) int {
	o := &opts{}
	global := flag.NewFlagSet("envelope", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	o.global(global, e)
	err := global.Parse(args)
	if err == nil && global.NArg() == 0 {
		printGlobalHelp(e.stderr, e)
		return exitUsage
	}
	if errors.Is(err, flag.ErrHelp) || (err == nil && global.Arg(0) == "help") {
		if err == nil && global.NArg() > 1 {
			if c := find(global.Arg(1)); c != nil {
				return runCommand(ctx, c, []string{"--help"}, e, o)
			}
		}
		printGlobalHelp(e.stdout, e)
		return exitOK
	}
	if err != nil {
		return report(e, usagef("%v (see envelope --help)", err))
	}
	c := find(global.Arg(0))
	if c == nil {
		return report(e, usagef("unknown command %q (see envelope --help)", global.Arg(0)))
	}
	return runCommand(ctx, c, global.Args()[1:], e, o)
}

func find(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func runCommand(ctx context.Context, c *command, args []string, e *env, o *opts) int {
	fs := flag.NewFlagSet("envelope "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if c.flags != nil {
		c.flags(fs, o)
	}
	if !c.offline {
		o.global(fs, e)
	}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(e.stdout, "Usage: envelope %s %s\n\n%s\n", c.name, c.args, strings.TrimSpace(c.long))
		if hasFlags(fs) {
			fmt.Fprintf(e.stdout, "\nFlags:\n")
			fs.SetOutput(e.stdout)
			fs.PrintDefaults()
		}
		return exitOK
	}
	if err != nil {
		return report(e, usagef("%s: %v (see envelope %s --help)", c.name, err, c.name))
	}
	if fs.NArg() > 0 {
		return report(e, usagef("%s: unexpected argument %q (see envelope %s --help)", c.name, fs.Arg(0), c.name))
	}
	if _, ok := o.kmsRef(); ok && !c.offline && e.ext.OpenKMS == nil {
		return report(e, &usageError{errNoKMS.Error()})
	}
	if c.database {
		if err := o.checkDB(); err != nil {
			return report(e, err)
		}
	}
	defer o.closeKeys()
	return report(e, c.run(ctx, e, o))
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func printGlobalHelp(w io.Writer, e *env) {
	var cmds strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&cmds, "  %-10s  %s\n", c.name, c.short)
	}
	fs := flag.NewFlagSet("envelope", flag.ContinueOnError)
	(&opts{}).global(fs, e)
	var flags strings.Builder
	fs.SetOutput(&flags)
	fs.PrintDefaults()
	kms := `
This build has no KMS support: --kms-url, and key URLs in the variables
above, need github.com/gorm-envelope/envelope/kms/cmd/envelope.
`
	if e.ext.OpenKMS != nil {
		kms = `
With --kms-url (or ENVELOPE_KMS_URL), the key held in the KMS is the primary
key and the configured keys are previous keys; the variables above may also
hold key URLs (any value containing "://").
`
	}
	fmt.Fprintf(w, globalHelp, cmds.String(), flags.String(), kms)
}

// report prints err as one line on stderr and returns the exit code.
func report(e *env, err error) int {
	if err == nil {
		return exitOK
	}
	if !errors.Is(err, errReported) {
		fmt.Fprintln(e.stderr, errLine(err))
	}
	var u *usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	return exitFail
}

// errLine formats err as one line prefixed "envelope: ".
func errLine(err error) string {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	return "envelope: " + strings.TrimPrefix(msg, "envelope: ")
}
