package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNamespacesAreSeparate(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "pc2.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a, b := db.Namespace("a"), db.Namespace("b")
	if err := a.Update(func(tx *Tx) error { return tx.Put([]byte("k"), []byte("va")) }); err != nil {
		t.Fatal(err)
	}
	b.View(func(tx *Tx) error {
		if v := tx.Get([]byte("k")); v != nil {
			t.Errorf("namespace b sees a's key: %q", v)
		}
		return nil
	})
	a.View(func(tx *Tx) error {
		if v := tx.Get([]byte("k")); string(v) != "va" {
			t.Errorf("got %q", v)
		}
		if err := tx.Put([]byte("x"), nil); !errors.Is(err, ErrReadOnly) {
			t.Errorf("write in View: %v", err)
		}
		return nil
	})
}

func TestForEachPrefixAndSub(t *testing.T) {
	db, _ := Open(filepath.Join(t.TempDir(), "pc2.db"), time.Second)
	defer db.Close()
	ns := db.Namespace("svc")
	ns.View(func(tx *Tx) error { // empty namespace, never written
		sub, _ := tx.Sub("x")
		if tx.Len() != 0 || sub.Get([]byte("a")) != nil {
			t.Error("empty namespace not empty")
		}
		return nil
	})
	err := ns.Update(func(tx *Tx) error {
		for _, k := range []string{"name/alice", "name/bob", "names", "other"} {
			if err := tx.Put([]byte(k), []byte("v-"+k)); err != nil {
				return err
			}
		}
		sub, err := tx.Sub("expiry")
		if err != nil {
			return err
		}
		return sub.Put([]byte("t1"), []byte("alice"))
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	ns.View(func(tx *Tx) error {
		tx.ForEach([]byte("name/"), func(k, v []byte) error { got = append(got, string(k)); return nil })
		sub, _ := tx.Sub("expiry")
		if string(sub.Get([]byte("t1"))) != "alice" {
			t.Error("sub-bucket value lost")
		}
		return nil
	})
	if fmt.Sprint(got) != "[name/alice name/bob]" {
		t.Fatalf("prefix scan = %v", got)
	}
}

func TestBatchConcurrentWriters(t *testing.T) {
	db, _ := Open(filepath.Join(t.TempDir(), "pc2.db"), time.Second)
	defer db.Close()
	ns := db.Namespace("q")
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			if err := ns.Batch(func(tx *Tx) error { return tx.Put(fmt.Appendf(nil, "k%02d", i), []byte{1}) }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ns.View(func(tx *Tx) error {
		if tx.Len() != 50 {
			t.Errorf("%d keys, want 50", tx.Len())
		}
		return nil
	})
}

// A second process must get a clear "in use" error, not block forever or
// corrupt the file. The child is this test binary re-executed.
func TestOpenInUseByAnotherProcess(t *testing.T) {
	if os.Getenv("PC2_STORE_CHILD") != "" {
		_, err := Open(os.Getenv("PC2_STORE_CHILD"), 100*time.Millisecond)
		if errors.Is(err, ErrInUse) {
			os.Exit(3)
		}
		os.Exit(1)
	}
	path := filepath.Join(t.TempDir(), "pc2.db")
	db, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenInUseByAnotherProcess$")
	cmd.Env = append(os.Environ(), "PC2_STORE_CHILD="+path)
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("child: %v, want exit 3 (ErrInUse)", err)
	}
}

// Writes that returned survive a crash: the child writes, reports, and is
// killed with SIGKILL before it can close the database.
func TestUpdateDurableAcrossKill(t *testing.T) {
	if path := os.Getenv("PC2_STORE_KILL_CHILD"); path != "" {
		db, err := Open(path, time.Second)
		if err != nil {
			os.Exit(1)
		}
		ns := db.Namespace("reg")
		for i := range 20 {
			if err := ns.Update(func(tx *Tx) error { return tx.Put(fmt.Appendf(nil, "n%02d", i), []byte("ok")) }); err != nil {
				os.Exit(1)
			}
			fmt.Printf("acked %d\n", i)
		}
		select {} // wait to be killed
	}
	path := filepath.Join(t.TempDir(), "pc2.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestUpdateDurableAcrossKill$")
	cmd.Env = append(os.Environ(), "PC2_STORE_KILL_CHILD="+path)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	var seen []byte
	for !contains(seen, "acked 19") {
		n, err := out.Read(buf)
		if err != nil {
			t.Fatalf("child output: %q, %v", seen, err)
		}
		seen = append(seen, buf[:n]...)
	}
	cmd.Process.Kill()
	cmd.Wait()
	db, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.Namespace("reg").View(func(tx *Tx) error {
		if tx.Len() != 20 {
			t.Errorf("%d acknowledged writes survived, want 20", tx.Len())
		}
		return nil
	})
}

func contains(b []byte, s string) bool { return strings.Contains(string(b), s) }

func BenchmarkUpdateFsync(b *testing.B) {
	db, _ := Open(filepath.Join(b.TempDir(), "pc2.db"), time.Second)
	defer db.Close()
	ns := db.Namespace("bench")
	val := make([]byte, 256)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if err := ns.Update(func(tx *Tx) error { return tx.Put(fmt.Appendf(nil, "%08d", i), val) }); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	db, _ := Open(filepath.Join(b.TempDir(), "pc2.db"), time.Second)
	defer db.Close()
	ns := db.Namespace("bench")
	ns.Update(func(tx *Tx) error {
		for i := range 10000 {
			tx.Put(fmt.Appendf(nil, "%08d", i), make([]byte, 256))
		}
		return nil
	})
	key := []byte("00005000")
	b.ReportAllocs()
	for b.Loop() {
		ns.View(func(tx *Tx) error { _ = tx.Get(key); return nil })
	}
}
