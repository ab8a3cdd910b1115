//go:build !unix

package pgtest

import "os/exec"

// runAs is the user the cluster's commands run as; on this platform, always
// the current user.
type runAs struct{}

func clusterUser() (runAs, error) { return runAs{}, nil }

func (runAs) apply(*exec.Cmd) {}

func (runAs) own(string) error { return nil }
