package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrCorrupt is wrapped by the errors of File for a stored file that is
// not a valid evergrant file: not JSON, a foreign format marker, or a
// grant stored under the wrong name. Test for it with errors.Is; the
// error names the file.
var ErrCorrupt = errors.New("store: corrupt or foreign file")

// CorruptError reports a stored file that is not a valid evergrant file.
// It matches ErrCorrupt with errors.Is. Its message names the file and
// the problem but never quotes the file's content, which may hold tokens.
type CorruptError struct {
	// Path is the file's path.
	Path string
	// Err says what is wrong with it.
	Err error
}

// Error implements error.
func (e *CorruptError) Error() string {
	return fmt.Sprintf("store: %s is not a valid evergrant file (move or delete it): %v", e.Path, e.Err)
}

// Unwrap returns e.Err.
func (e *CorruptError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Format markers of the files File writes. A file with another marker is
// reported as corrupt rather than guessed at.
const (
	grantFormat        = "evergrant.grant/v1"
	registrationFormat = "evergrant.registration/v1"
)

const (
	grantsDir        = "grants"
	registrationsDir = "registrations"
	locksDir         = "locks"

	dirPerm  fs.FileMode = 0o700
	filePerm fs.FileMode = 0o600

	// maxFileSize bounds what is read of one stored file; a grant is a
	// few kilobytes.
	maxFileSize = 1 << 20

	lockPollMin = 5 * time.Millisecond
	lockPollMax = 50 * time.Millisecond
)

// File is a Store that keeps each grant and registration in its own JSON
// file under a directory, for the CLI and for hosts whose processes share
// grants. Create one with OpenFile.
//
// Layout, all directories 0700 and all files 0600:
//
//	DIR/grants/HASH.json          one grant, HASH from the grant's key
//	DIR/registrations/HASH.json   one registration, HASH from issuer and redirect URI
//	DIR/locks/HASH.lock           the lock file of a key (never removed)
//
// HASH is the first 32 hex digits of the SHA-256 of the key. Each file
// holds a format marker ({"format":"evergrant.grant/v1","grant":{…}}), so
// a corrupt or foreign file is reported with an error wrapping ErrCorrupt
// that names it, and never affects other grants. Writes are atomic: a
// temporary file in the same directory, fsync, rename, fsync of the
// directory.
//
// Lock uses an OS file lock (flock on Unix, an exclusive open on Windows)
// together with an in-process lock, so it excludes goroutines of this
// process and other processes, and a lock held by a process that dies is
// released. On platforms with neither (e.g. Solaris, Plan 9, wasm) Lock
// excludes only goroutines of this process.
//
// A File is safe for concurrent use by many goroutines and processes.
type File struct {
	dir string // absolute
}

var _ Store = (*File)(nil)

// DefaultDir returns the directory the CLI keeps grants in: evergrant
// under os.UserConfigDir (e.g. ~/.config/evergrant on Linux).
func DefaultDir() (string, error) {
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("store: no user config directory: %w", err)
	}
	return filepath.Join(d, "evergrant"), nil
}

// OpenFile opens the File store in dir, creating dir and its
// subdirectories with mode 0700 as needed.
//
// Permission policy (Unix): dir and its subdirectories must belong to the
// current user, or OpenFile refuses with an error. If one is accessible
// to group or others, OpenFile tightens it to 0700 rather than refusing,
// so a directory created under a permissive umask, or by hand, is
// repaired on first use. Files are always written 0600.
func OpenFile(dir string) (*File, error) {
	if dir == "" {
		return nil, errors.New("store: OpenFile: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := os.MkdirAll(abs, dirPerm); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := secureDir(abs); err != nil {
		return nil, err
	}
	for _, sub := range []string{grantsDir, registrationsDir, locksDir} {
		p := filepath.Join(abs, sub)
		if err := os.Mkdir(p, dirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("store: %w", err)
		}
		if err := secureDir(p); err != nil {
			return nil, err
		}
	}
	return &File{dir: abs}, nil
}

// secureDir checks that path is a directory of the current user and
// tightens its mode to 0700 (see OpenFile).
func secureDir(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("store: %s is not a directory", path)
	}
	if err := checkOwner(path, fi); err != nil {
		return err
	}
	if checkPerms && fi.Mode().Perm() != dirPerm {
		if err := os.Chmod(path, dirPerm); err != nil {
			return fmt.Errorf("store: %s has mode %v and cannot be made private: %w", path, fi.Mode().Perm(), err)
		}
	}
	return nil
}

// Dir returns the store's directory, as an absolute path.
func (f *File) Dir() string { return f.dir }

// fileKey names the file of a key: the first 128 bits of its SHA-256, in
// hex.
func fileKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

func (f *File) grantPath(key string) string {
	return filepath.Join(f.dir, grantsDir, fileKey(key)+".json")
}

func (f *File) registrationPath(issuer, redirectURI string) string {
	return filepath.Join(f.dir, registrationsDir, fileKey(issuer+"\n"+redirectURI)+".json")
}

func (f *File) lockPath(key string) string {
	return filepath.Join(f.dir, locksDir, fileKey(key)+".lock")
}

type grantFile struct {
	Format string `json:"format"`
	Grant  *Grant `json:"grant"`
}

type registrationFile struct {
	Format       string        `json:"format"`
	Registration *Registration `json:"registration"`
}

// Load returns the grant stored under key, or ErrNotFound. A file that is
// not a valid grant of key gives a *CorruptError.
func (f *File) Load(ctx context.Context, key string) (*Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := f.grantPath(key)
	data, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	g, err := decodeGrant(path, data)
	if err != nil {
		return nil, err
	}
	if g.Key != key {
		return nil, &CorruptError{Path: path, Err: fmt.Errorf("it holds the grant of %q, not of %q", g.Key, key)}
	}
	return g, nil
}

// Save stores g under g.Key, replacing what was there, atomically. It
// stores g as given: it does not set UpdatedAt.
func (f *File) Save(ctx context.Context, g *Grant) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if g == nil {
		return errNilGrant
	}
	if g.Key == "" {
		return errNoKey
	}
	data, err := json.MarshalIndent(grantFile{Format: grantFormat, Grant: g}, "", "  ")
	if err != nil {
		return fmt.Errorf("store: encoding grant: %w", err)
	}
	return writeFileAtomic(f.grantPath(g.Key), append(data, '\n'))
}

// Delete removes the grant under key; deleting nothing is not an error.
// It also removes a corrupt file stored under key.
func (f *File) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path := f.grantPath(key)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("store: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// List returns every valid grant, in key order.
//
// A bad file does not hide the good ones: if some files in the grants
// directory cannot be read or are not valid grants, List returns the
// valid grants together with a non-nil error that joins one error per bad
// file (each names its file; corrupt and foreign files give a
// *CorruptError, so errors.Is(err, ErrCorrupt) holds). Callers that show
// grants (the CLI's status) should show the grants and warn with the
// error; callers that need every grant should treat the error as fatal.
// Files not named *.json and temporary files are ignored. If the
// directory itself cannot be read, List returns nil and the error.
func (f *File) List(ctx context.Context) ([]*Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := filepath.Join(f.dir, grantsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var (
		gs   []*Grant
		errs []error
	)
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		path := filepath.Join(dir, name)
		data, err := readFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		g, err := decodeGrant(path, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if name != fileKey(g.Key)+".json" {
			errs = append(errs, &CorruptError{Path: path, Err: fmt.Errorf("its name does not match the key of its grant, %q", g.Key)})
			continue
		}
		gs = append(gs, g)
	}
	slices.SortFunc(gs, func(a, b *Grant) int { return strings.Compare(a.Key, b.Key) })
	return gs, errors.Join(errs...)
}

// LoadRegistration returns the registration for (issuer, redirectURI), or
// ErrNotFound. A file that is not a valid registration for them gives a
// *CorruptError.
func (f *File) LoadRegistration(ctx context.Context, issuer, redirectURI string) (*Registration, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := f.registrationPath(issuer, redirectURI)
	data, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	var rf registrationFile
	if err := json.Unmarshal(data, &rf); err != nil {
		return nil, &CorruptError{Path: path, Err: err}
	}
	if err := checkFormat(rf.Format, registrationFormat); err != nil {
		return nil, &CorruptError{Path: path, Err: err}
	}
	r := rf.Registration
	if r == nil {
		return nil, &CorruptError{Path: path, Err: errors.New("it holds no registration")}
	}
	if r.Issuer != issuer || r.RedirectURI != redirectURI {
		return nil, &CorruptError{Path: path, Err: fmt.Errorf("it holds the registration of (%q, %q), not of (%q, %q)", r.Issuer, r.RedirectURI, issuer, redirectURI)}
	}
	return r, nil
}

// SaveRegistration stores r under (r.Issuer, r.RedirectURI), replacing
// what was there, atomically.
func (f *File) SaveRegistration(ctx context.Context, r *Registration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r == nil {
		return errNilReg
	}
	data, err := json.MarshalIndent(registrationFile{Format: registrationFormat, Registration: r}, "", "  ")
	if err != nil {
		return fmt.Errorf("store: encoding registration: %w", err)
	}
	return writeFileAtomic(f.registrationPath(r.Issuer, r.RedirectURI), append(data, '\n'))
}

// DeleteRegistration implements Store: it removes every registration file
// of issuer with that client ID. Files that are not valid registrations
// are left alone.
func (f *File) DeleteRegistration(ctx context.Context, issuer, clientID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Join(f.dir, registrationsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	removed := false
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := readFile(path)
		if err != nil {
			continue
		}
		var rf registrationFile
		if json.Unmarshal(data, &rf) != nil || checkFormat(rf.Format, registrationFormat) != nil || rf.Registration == nil {
			continue
		}
		if rf.Registration.Issuer == issuer && rf.Registration.ClientID == clientID {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("store: %w", err)
			}
			removed = true
		}
	}
	if removed {
		if err := syncDir(dir); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	return nil
}

// processLocks is the in-process half of File.Lock, keyed by lock file
// path so that every File of this process on the same directory shares
// it.
var processLocks keyLocks

// errLocked is returned by tryLockFile when another holder has the lock.
var errLocked = errors.New("store: lock is held")

// Lock takes the exclusive lock of key, waiting until it is free or ctx
// is done (then it returns ctx.Err()). The lock excludes the goroutines of
// this process, through any File on the same directory, and other
// processes, through an OS lock on DIR/locks/HASH.lock; the OS releases
// it if the holding process dies. Waiting for another process polls, with
// a backoff from 5 to 50 ms. The returned unlock function releases the
// lock; calling it more than once does nothing. The key need not have a
// grant.
func (f *File) Lock(ctx context.Context, key string) (unlock func(), err error) {
	path := f.lockPath(key)
	unlockProcess, err := processLocks.lock(ctx, path)
	if err != nil {
		return nil, err
	}
	wait := lockPollMin
	for {
		release, err := tryLockFile(path)
		if err == nil {
			var once sync.Once
			return func() {
				once.Do(func() {
					release()
					unlockProcess()
				})
			}, nil
		}
		if !errors.Is(err, errLocked) {
			unlockProcess()
			return nil, fmt.Errorf("store: locking %s: %w", path, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			unlockProcess()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, lockPollMax)
	}
}

func checkFormat(got, want string) error {
	switch got {
	case want:
		return nil
	case "":
		return fmt.Errorf("no format marker (want %q)", want)
	default:
		return fmt.Errorf("format %q (want %q)", got, want)
	}
}

func decodeGrant(path string, data []byte) (*Grant, error) {
	var gf grantFile
	if err := json.Unmarshal(data, &gf); err != nil {
		return nil, &CorruptError{Path: path, Err: err}
	}
	if err := checkFormat(gf.Format, grantFormat); err != nil {
		return nil, &CorruptError{Path: path, Err: err}
	}
	if gf.Grant == nil || gf.Grant.Key == "" {
		return nil, &CorruptError{Path: path, Err: errors.New("it holds no grant")}
	}
	return gf.Grant, nil
}

// readFile reads a stored file of at most maxFileSize bytes. A larger
// file gives a *CorruptError.
func readFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("store: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("store: reading %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, &CorruptError{Path: path, Err: fmt.Errorf("larger than %d bytes", maxFileSize)}
	}
	return data, nil
}

// writeFileAtomic replaces path with data: a temporary file (0600) in the
// same directory, fsync, rename over path, fsync of the directory. A
// crash leaves either the old or the new file, and at worst a temporary
// file that List ignores.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			err = fmt.Errorf("store: writing %s: %w", path, err)
		}
	}()
	if err := tmp.Chmod(filePerm); err != nil && checkPerms {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}
