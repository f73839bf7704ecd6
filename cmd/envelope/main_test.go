package main

import (
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"envelope": main})
}

// TestScripts runs the command as built here: the behaviour itself is
// tested in internal/cli; these check the wiring of this build.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{Dir: "testdata"})
}
