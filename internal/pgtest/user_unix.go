//go:build unix

package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
)

// runAs is the user the cluster's commands run as: the current user, or,
// when that is root (whom PostgreSQL refuses), an unprivileged one.
type runAs struct {
	name     string
	uid, gid uint32
	switched bool // whether commands run as another user than this process
}

// clusterUser returns the current user unless it is root; for root, the
// user postgres, or nobody if there is no postgres.
func clusterUser() (runAs, error) {
	if os.Geteuid() != 0 {
		return runAs{}, nil
	}
	var tried []string
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			tried = append(tried, fmt.Sprintf("user %s has uid %s, gid %s", name, u.Uid, u.Gid))
			continue
		}
		return runAs{name: name, uid: uint32(uid), gid: uint32(gid), switched: true}, nil
	}
	return runAs{}, fmt.Errorf("pgtest: running as root, and no unprivileged user to run PostgreSQL as: %v", tried)
}

// apply makes cmd run as r.
func (r runAs) apply(cmd *exec.Cmd) {
	if !r.switched {
		return
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: r.uid, Gid: r.gid},
	}
}

// own gives dir to r, with mode 0700.
func (r runAs) own(dir string) error {
	if r.switched {
		if err := os.Chown(dir, int(r.uid), int(r.gid)); err != nil {
			return err
		}
	}
	return os.Chmod(dir, 0o700)
}
