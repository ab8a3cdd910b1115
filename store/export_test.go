package store

// Internals of File for the tests of package store_test, which run the
// storetest suite (an internal test cannot import storetest: it imports
// store).

const (
	CheckPerms       = checkPerms
	MaxFileSize      = maxFileSize
	GrantsDir        = grantsDir
	RegistrationsDir = registrationsDir
	LocksDir         = locksDir
)

var (
	FileKey     = fileKey
	TryLockFile = tryLockFile
)

func (f *File) GrantPath(key string) string { return f.grantPath(key) }

func (f *File) RegistrationPath(issuer, redirectURI string) string {
	return f.registrationPath(issuer, redirectURI)
}

func (f *File) LockPath(key string) string { return f.lockPath(key) }
