package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// runVersion is `evergrant version` (also `evergrant --version`): it prints
// the version of this binary.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: evergrant version\n\nPrints the version of this binary: its module version, and the revision it was built from when known.\n")
	}
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	fmt.Fprintln(stdout, "evergrant", version)
	return exitOK
}

// version is this binary's version, as versionString reports it. MCP
// clients the CLI creates send it in their implementation info.
var version = buildVersion()

// buildVersion returns the version recorded in the binary's build
// information, or "unknown" when there is none.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return versionString(info)
}

// versionString formats the version of the main module of info: its module
// version ("v1.2.3" when installed with go install …@v1.2.3), or "devel" for
// a build from a working tree without a module version ("(devel)"),
// followed by the first 12 characters of the VCS revision and "+dirty" when
// the working tree had local changes, as far as the build recorded them.
// What the module version already says is not repeated: the revision of a
// pseudo-version, the "+dirty" Go adds to the version of a modified tree.
func versionString(info *debug.BuildInfo) string {
	v := info.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	var rev string
	var dirty bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	mark := ""
	if dirty && !strings.HasSuffix(v, "+dirty") {
		mark = "+dirty"
	}
	if rev == "" || strings.Contains(v, rev) {
		return v + mark
	}
	return v + " " + rev + mark
}
