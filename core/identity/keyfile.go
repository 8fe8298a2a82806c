package identity

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// KeyFileMode is the only mode a key file may have.
const KeyFileMode fs.FileMode = 0o600

// KeyFileError explains why a key file cannot be used. It is never returned
// for a missing file: callers test errors.Is(err, fs.ErrNotExist) for that, so
// that a damaged key can never be mistaken for "no key yet" and replaced.
type KeyFileError struct {
	Path   string
	Reason string
	Err    error
}

func (e *KeyFileError) Error() string {
	return fmt.Sprintf("key file %s: %s", e.Path, e.Reason)
}

func (e *KeyFileError) Unwrap() error { return e.Err }

// LoadKeyFile reads a key file: exactly 64 raw bytes (seed ‖ public key),
// readable by its owner only.
func LoadKeyFile(path string) (*KeyPair, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // keeps fs.ErrNotExist visible
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, &KeyFileError{Path: path, Reason: err.Error(), Err: err}
	}
	if !st.Mode().IsRegular() {
		return nil, &KeyFileError{Path: path, Reason: "not a regular file"}
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, &KeyFileError{Path: path, Reason: fmt.Sprintf("mode %04o lets others read the private key; run: chmod 600 %s", perm, path)}
	}
	// Read one byte more than a key so an oversized file is caught without
	// reading all of it.
	buf := make([]byte, PrivateKeySize+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, &KeyFileError{Path: path, Reason: err.Error(), Err: err}
	}
	switch {
	case n < PrivateKeySize:
		return nil, &KeyFileError{Path: path, Reason: fmt.Sprintf("%d bytes, want %d (truncated or not a pc2 key file)", n, PrivateKeySize), Err: ErrInvalidKey}
	case n > PrivateKeySize:
		return nil, &KeyFileError{Path: path, Reason: fmt.Sprintf("more than %d bytes (not a pc2 key file)", PrivateKeySize), Err: ErrInvalidKey}
	}
	kp, err := FromPrivateKey(buf[:PrivateKeySize])
	if err != nil {
		return nil, &KeyFileError{Path: path, Reason: err.Error(), Err: err}
	}
	return kp, nil
}

// WriteKeyFile stores kp at path with mode 0600. The key reaches the disk
// (file and directory synced) before it returns, and an existing file is
// never replaced: it fails with fs.ErrExist instead.
func WriteKeyFile(path string, kp *KeyPair) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op once linked under the final name
	if err := tmp.Chmod(KeyFileMode); err != nil {
		tmp.Close()
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if _, err := tmp.Write(kp.priv); err != nil {
		tmp.Close()
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	// Link, not rename: link fails if path exists, so two racing writers
	// cannot replace each other's key.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
