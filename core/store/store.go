// Package store is the one embedded database of a pc2 node: a single bbolt
// file in the data directory, split into one namespace per service.
//
// Why bbolt (go.etcd.io/bbolt) rather than SQLite (modernc.org/sqlite):
//   - every write transaction is fsynced before Update returns, which is the
//     "durable before acknowledged" rule for registrations, queued messages
//     and transfer state, with no tuning;
//   - what PC2 stores is keyed by ids, names and sequence numbers and read by
//     key or by ordered prefix scans; a sorted key-value store fits that
//     without a query language;
//   - it is pure Go, small (SQLite transpiled to Go adds megabytes to the
//     binary and a second memory allocator), and has a single-writer model
//     that is simple to reason about. Many concurrent small writers use
//     Batch, which coalesces them into one fsync.
//
// Values returned inside a transaction are valid only inside it; copy them
// to keep them.
package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// ErrInUse means another process holds the database open.
var ErrInUse = errors.New("database is in use by another process")

// DB is the node's database.
type DB struct {
	bolt *bbolt.DB
	path string
}

// Open opens or creates the database file at path. If another process has
// it open, Open fails with ErrInUse after lockWait.
func Open(path string, lockWait time.Duration) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	b, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockWait})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w (is another pc2 running with this data directory?)", path, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &DB{bolt: b, path: path}, nil
}

// Path returns the database file name.
func (db *DB) Path() string { return db.path }

// Close closes the database.
func (db *DB) Close() error { return db.bolt.Close() }

// Namespace returns the key space of one service. Names are
// case-sensitive; two services must not share one.
func (db *DB) Namespace(name string) *Namespace {
	return &Namespace{db: db.bolt, name: []byte(name)}
}

// Namespace is one service's part of the database.
type Namespace struct {
	db   *bbolt.DB
	name []byte
}

// Update runs fn in a write transaction. When Update returns nil, the
// changes are on disk.
func (n *Namespace) Update(fn func(*Tx) error) error {
	return n.db.Update(func(btx *bbolt.Tx) error {
		b, err := btx.CreateBucketIfNotExists(n.name)
		if err != nil {
			return err
		}
		return fn(&Tx{b: b, writable: true})
	})
}

// Batch is Update for many concurrent small writers: calls arriving
// together share one transaction and one fsync. fn may run more than once,
// so it must not have side effects outside the transaction.
func (n *Namespace) Batch(fn func(*Tx) error) error {
	return n.db.Batch(func(btx *bbolt.Tx) error {
		b, err := btx.CreateBucketIfNotExists(n.name)
		if err != nil {
			return err
		}
		return fn(&Tx{b: b, writable: true})
	})
}

// View runs fn in a read-only transaction.
func (n *Namespace) View(fn func(*Tx) error) error {
	return n.db.View(func(btx *bbolt.Tx) error {
		return fn(&Tx{b: btx.Bucket(n.name)})
	})
}

// Tx is a transaction scoped to a namespace or one of its sub-buckets.
// A read transaction on a bucket that was never written sees it empty.
type Tx struct {
	b        *bbolt.Bucket // nil: nothing stored yet
	writable bool
}

// ErrReadOnly is returned by writes in a View transaction.
var ErrReadOnly = errors.New("store: write in a read-only transaction")

// Get returns the value of key, or nil.
func (tx *Tx) Get(key []byte) []byte {
	if tx.b == nil {
		return nil
	}
	return tx.b.Get(key)
}

// Put sets key to value.
func (tx *Tx) Put(key, value []byte) error {
	if !tx.writable {
		return ErrReadOnly
	}
	return tx.b.Put(key, value)
}

// Delete removes key; deleting a missing key is not an error.
func (tx *Tx) Delete(key []byte) error {
	if !tx.writable {
		return ErrReadOnly
	}
	return tx.b.Delete(key)
}

// Sub returns the nested bucket name, created on first write.
func (tx *Tx) Sub(name string) (*Tx, error) {
	if tx.b == nil {
		return &Tx{}, nil
	}
	if !tx.writable {
		return &Tx{b: tx.b.Bucket([]byte(name))}, nil
	}
	b, err := tx.b.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return nil, fmt.Errorf("store: bucket %q: %w", name, err)
	}
	return &Tx{b: b, writable: true}, nil
}

// ForEach calls fn for every key starting with prefix, in key order, and
// stops at the first error. Nested buckets are skipped.
func (tx *Tx) ForEach(prefix []byte, fn func(key, value []byte) error) error {
	if tx.b == nil {
		return nil
	}
	c := tx.b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if v == nil {
			continue
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// Len returns the number of keys at this level.
func (tx *Tx) Len() int {
	if tx.b == nil {
		return 0
	}
	return tx.b.Stats().KeyN
}
