package registry_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/store"
	"github.com/elacity/pc2/gateway/names"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
)

const childEnv = "PC2_REGISTRY_TEST_CHILD_DIR"

// TestChildRegistry is not a test on its own: TestAcknowledgedSurvivesSIGKILL
// runs the test binary again with only this function and childEnv set, so
// the registry lives in a process that can be killed.
func TestChildRegistry(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		t.Skip("helper process for TestAcknowledgedSurvivesSIGKILL")
	}
	db, err := store.Open(filepath.Join(dir, "pc2.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rules, _ := names.NewRules([]string{"ela.city"})
	reg, err := registry.Open(registry.Options{Rules: rules, Storage: db.Namespace("registry"), AllowPrivateTargets: true})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("LISTEN %s\n", ln.Addr())
	registry.NewAPI(reg, registry.APIOptions{}).Serve(ln) // until killed
}

func TestAcknowledgedSurvivesSIGKILL(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestChildRegistry$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "LISTEN "); ok {
				addr <- a
			}
		}
		close(addr)
	}()
	var url string
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatal("child exited before listening")
		}
		url = "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatal("child did not start")
	}
	ctx := context.Background()
	c := &client.Client{BaseURL: url, Key: key(t, 1)}
	var regs []string
	for _, n := range []string{"alice.ela.city", "bob-1.ela.city", "carol.ela.city"} {
		if _, err := c.Register(ctx, client.Registration{Name: n, Target: "127.0.0.1:9443"}); err != nil {
			t.Fatal(err)
		}
		regs = append(regs, n) // acknowledged
	}
	// Kill right after the last acknowledgement: no chance for a graceful close.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	db, err := store.Open(filepath.Join(dir, "pc2.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rules, _ := names.NewRules([]string{"ela.city"})
	reg, err := registry.Open(registry.Options{Rules: rules, Storage: db.Namespace("registry")})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range regs {
		if addr, ok := reg.TLSTarget(n); !ok || addr != "127.0.0.1:9443" {
			t.Errorf("%s acknowledged but lost after SIGKILL", n)
		}
	}
}
