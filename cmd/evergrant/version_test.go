package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionString(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	vcs := func(modified string) []debug.BuildSetting {
		s := []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}}
		if modified != "" {
			s = append(s, debug.BuildSetting{Key: "vcs.modified", Value: modified})
		}
		return s
	}
	tests := []struct {
		name     string
		version  string
		settings []debug.BuildSetting
		want     string
	}{
		{"installed at a tag", "v1.2.3", nil, "v1.2.3"},
		{"tag with revision", "v1.2.3", vcs("false"), "v1.2.3 0123456789ab"},
		{"devel without VCS", "(devel)", nil, "devel"},
		{"empty version", "", nil, "devel"},
		{"devel, clean tree", "(devel)", vcs("false"), "devel 0123456789ab"},
		{"devel, modified tree", "(devel)", vcs("true"), "devel 0123456789ab+dirty"},
		{"pseudo-version holds the revision", "v0.0.0-20261202173100-0123456789ab", vcs("false"), "v0.0.0-20261202173100-0123456789ab"},
		{"pseudo-version, modified", "v0.0.0-20261202173100-0123456789ab+dirty", vcs("true"), "v0.0.0-20261202173100-0123456789ab+dirty"},
		{"tag, modified", "v1.2.3+dirty", vcs("true"), "v1.2.3+dirty 0123456789ab"},
		{"short revision", "(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}, "devel abc"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			info := &debug.BuildInfo{Main: debug.Module{Path: "github.com/evergrant/evergrant", Version: tc.version}, Settings: tc.settings}
			if got := versionString(info); got != tc.want {
				t.Errorf("versionString = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		var stdout, stderr strings.Builder
		if code := run(t.Context(), args, &stdout, &stderr); code != exitOK {
			t.Fatalf("%v: exit %d, stderr %q", args, code, stderr.String())
		}
		if want := "evergrant " + version + "\n"; stdout.String() != want {
			t.Errorf("%v: %q, want %q", args, stdout.String(), want)
		}
	}
}
