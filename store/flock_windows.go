//go:build windows

package store

import (
	"os"
	"syscall"
)

// errorSharingViolation is ERROR_SHARING_VIOLATION, which syscall does not
// name.
const errorSharingViolation syscall.Errno = 32

// tryLockFile opens the file at path, creating it if needed, with no
// sharing allowed, without waiting: if another handle has it open, it
// returns errLocked. The returned function closes the handle, releasing
// the lock; Windows closes it too when the process exits.
func tryLockFile(path string) (release func(), err error) {
	p, err := syscall.UTF16PtrFromString(path)
	if err != nil {
		return nil, err
	}
	h, err := syscall.CreateFile(p, syscall.GENERIC_READ|syscall.GENERIC_WRITE, 0, nil,
		syscall.OPEN_ALWAYS, syscall.FILE_ATTRIBUTE_NORMAL, 0)
	if err != nil {
		if err == errorSharingViolation {
			return nil, errLocked
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return func() { syscall.CloseHandle(h) }, nil
}
