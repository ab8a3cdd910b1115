//go:build !unix

package store

import "io/fs"

// checkPerms is whether Unix permission bits are checked and tightened.
// Elsewhere (Windows) access is governed by the ACLs of the user's
// profile directory, and mode bits mean little.
const checkPerms = false

// checkOwner accepts any directory: ownership is not checked here.
func checkOwner(path string, fi fs.FileInfo) error { return nil }

// syncDir does nothing: directories cannot be fsynced here.
func syncDir(dir string) error { return nil }
