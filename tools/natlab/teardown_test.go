package natlab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

const helperEnv = "PC2_NATLAB_HELPER"

// TestHelperLab is not a test: it is the child process of the teardown tests.
// It brings a lab up, starts a process that ignores its parent's death, and
// then either fails the test (forced failure) or kills itself (crash).
func TestHelperLab(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for the teardown tests")
	}
	a, _ := natlab.ParseNATSpec("prc")
	topo := natlab.PairTopology(a, a, 1)
	var l *natlab.Lab
	if mode == "failure" {
		l = upLab(t, topo) // its cleanup tears down
	} else {
		needRoot(t)
		var err error
		l, err = natlab.Up(context.Background(), topo, natlab.Config{Name: "test-crash", Launcher: testLauncher(t)})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Start(context.Background(), "a1", []string{"sleep", "600"}, natlab.StartOptions{Detach: true}); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("RUNID=%s\n", l.ID)
	os.Stdout.Sync()
	switch mode {
	case "failure":
		t.Fatal("forced failure")
	case "crash":
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Minute) // not reached
	}
}

func runHelper(t *testing.T, mode string) (runID string, out []byte, err error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLab$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	out, err = cmd.CombinedOutput()
	m := regexp.MustCompile(`RUNID=([0-9a-f]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("helper (%s) printed no run id: %v\n%s", mode, err, out)
	}
	return string(m[1]), out, err
}

// TestTeardownAfterForcedFailure: a test that fails after bringing a lab up
// leaves no namespace and no process behind (its t.Cleanup tears down, and
// processes are killed even when they would survive their parent).
func TestTeardownAfterForcedFailure(t *testing.T) {
	needRoot(t)
	id, out, err := runHelper(t, "failure")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !bytes.Contains(out, []byte("forced failure")) {
		t.Fatalf("helper should have failed with 'forced failure': %v\n%s", err, out)
	}
	assertGone(t, id)
}

// TestTeardownAfterCrash: a lab whose owner was SIGKILLed (no cleanup ran) is
// found stale by the next CleanStale and removed, while a live lab is kept.
func TestTeardownAfterCrash(t *testing.T) {
	needRoot(t)
	a, _ := natlab.ParseNATSpec("fc")
	live := upLab(t, natlab.PairTopology(a, a, 1))

	id, out, err := runHelper(t, "crash")
	if err == nil {
		t.Fatalf("crash helper exited cleanly:\n%s", out)
	}
	// Labs of other test packages running at the same time may clean the
	// stale run first; that is the mechanism under test too, so only an
	// untouched stale run is checked in detail.
	if nss, _ := natlab.Namespaces(id); len(nss) == 0 {
		t.Logf("crashed run %s was already removed by a concurrent lab's stale cleanup", id)
	} else {
		t.Logf("crashed run %s left %d namespaces and processes %v", id, len(nss), natlab.ProcessesOf(id))
		removed, err := natlab.CleanStale(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("CleanStale removed %v", removed)
	}
	assertGone(t, id)
	if left, _ := natlab.Namespaces(live.ID); len(left) != len(live.Nodes) {
		t.Fatalf("CleanStale touched the live lab: %d of %d namespaces left", len(left), len(live.Nodes))
	}
	// And the live lab still works.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := live.MappedOf(ctx, "a1"); err != nil {
		t.Fatalf("live lab broken after CleanStale: %v", err)
	}
}
