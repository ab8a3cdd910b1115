//go:build unix

package store

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// checkPerms is whether Unix permission bits are checked and tightened.
const checkPerms = true

// checkOwner refuses a directory that belongs to another user.
func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("store: %s belongs to uid %d, not to this user (uid %d); refusing to keep grants there", path, st.Uid, uid)
	}
	return nil
}

// syncDir fsyncs the directory dir, so that a rename or removal in it
// survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
