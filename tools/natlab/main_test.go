package natlab_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
)

// agentEnv makes the test binary act as a lab agent (see TestMain): tests
// never need a pre-built pc2 binary.
const agentEnv = "PC2_NATLAB_TEST_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		os.Exit(agentMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func agentMain(args []string) int {
	ctx := context.Background()
	var err error
	if len(args) > 0 && testAgents[args[0]] != nil {
		err = testAgents[args[0]](ctx, args[1:])
	} else {
		err = natlab.AgentMain(ctx, args, os.Stdout, os.Stderr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	return 0
}

// testAgents are agents that only tests need (filled by test files).
var testAgents = map[string]func(ctx context.Context, args []string) error{}

func testLauncher(t testing.TB) natlab.Launcher {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return natlab.Launcher{Path: exe, Env: []string{agentEnv + "=1"}}
}

var depsOnce sync.Once
var depsErr error

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and nftables (run `sudo go test ./tools/natlab/...`)")
	}
	depsOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		depsErr = natlab.InstallDeps(ctx)
	})
	if depsErr != nil {
		t.Fatalf("install lab dependencies: %v", depsErr)
	}
}

// upLab brings a topology up and registers a cleanup that tears it down and
// checks that no namespace or process of the run is left.
func upLab(t testing.TB, topo natlab.Topology) *natlab.Lab {
	t.Helper()
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := natlab.Up(ctx, topo, natlab.Config{Name: "test-" + topo.Name, Launcher: testLauncher(t)})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		id := l.ID
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
		assertGone(t, id)
	})
	return l
}

func assertGone(t testing.TB, id string) {
	t.Helper()
	if nss, err := natlab.Namespaces(id); err != nil || len(nss) > 0 {
		t.Errorf("run %s left namespaces %v (err %v)", id, nss, err)
	}
	if pids := natlab.ProcessesOf(id); len(pids) > 0 {
		t.Errorf("run %s left processes %v", id, pids)
	}
}
