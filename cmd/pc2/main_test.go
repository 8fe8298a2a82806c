package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/host"
)

var pc2Bin string

// TestMain builds the real binary once: these tests run pc2 as a user does.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pc2-cli-test")
	if err != nil {
		panic(err)
	}
	pc2Bin = filepath.Join(dir, "pc2")
	if out, err := exec.Command("go", "build", "-race", "-o", pc2Bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build pc2: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func pc2(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pc2Bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("pc2 %v: %v", args, err)
	}
	if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "DATA RACE") {
		t.Fatalf("pc2 %v crashed:\n%s", args, r.stderr)
	}
	return r
}

func TestIDNewAndRecover(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	r := pc2(t, "", "id", "new", "--data", a, "--json")
	if r.code != 0 {
		t.Fatalf("id new: %d %s", r.code, r.stderr)
	}
	var created identityView
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.DID, "did:boson:") || len(strings.Fields(created.Words)) != 12 {
		t.Fatalf("id new printed %+v", created)
	}
	st, err := os.Stat(filepath.Join(a, "key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	// The human form carries the DID and the words too.
	human := pc2(t, "", "id", "new", "--print-only")
	if !regexp.MustCompile(`did:boson:\w+`).MatchString(human.stdout) || !strings.Contains(human.stdout, "Recovery words") {
		t.Fatalf("human output:\n%s", human.stdout)
	}

	r = pc2(t, strings.ToUpper(created.Words)+"\n", "id", "recover", "--data", b, "--json")
	if r.code != 0 {
		t.Fatalf("recover: %d %s", r.code, r.stderr)
	}
	var recovered identityView
	json.Unmarshal([]byte(r.stdout), &recovered)
	if recovered.ID != created.ID {
		t.Fatalf("recovered %s, created %s", recovered.ID, created.ID)
	}
	ka, _ := os.ReadFile(filepath.Join(a, "key"))
	kb, _ := os.ReadFile(filepath.Join(b, "key"))
	if !bytes.Equal(ka, kb) {
		t.Fatal("recovered key file differs")
	}
	// Recovering again into the same place is fine; a different identity there is refused.
	if r := pc2(t, created.Words, "id", "recover", "--data", b); r.code != 0 || !strings.Contains(r.stderr, "already holds this identity") {
		t.Fatalf("re-recover: %d %s", r.code, r.stderr)
	}
	const other = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
	if r := pc2(t, other, "id", "recover", "--data", b); r.code == 0 || !strings.Contains(r.stderr, "different identity") {
		t.Fatalf("recover over other id: %d %s", r.code, r.stderr)
	}
	if kb2, _ := os.ReadFile(filepath.Join(b, "key")); !bytes.Equal(kb, kb2) {
		t.Fatal("key file replaced")
	}
}

func TestIDRecoverRefusesBadWords(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ words, want string }{
		{strings.TrimSpace(strings.Repeat("abandon ", 12)), "checksum does not match"},
		{strings.Repeat("abandon ", 11) + "aboot", `word 12 "aboot" is not in the BIP-39`},
		{"abandon about", "2 words, want 12"},
	} {
		r := pc2(t, tc.words, "id", "recover", "--data", dir)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: code %d, stderr %q, want %q", tc.words, r.code, r.stderr, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a key file was written from bad words")
	}
	// Words on the command line are refused: they would leak into shell history.
	if r := pc2(t, "", "id", "recover", "abandon", "about"); r.code != 2 || !strings.Contains(r.stderr, "standard input") {
		t.Fatalf("argv words: %d %s", r.code, r.stderr)
	}
}

func TestDamagedKeyIsNeverReplaced(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		mode os.FileMode
		want string
	}{
		{"truncated", bytes.Repeat([]byte{7}, 40), 0o600, "40 bytes, want 64"},
		{"text instead of raw bytes", []byte("253vmGfhqrrGrzqzxu9NBPGgZFA1iHqyeEJMMZem7ebBn8nApYgFX8diYpLFdb34vdPMutt1eAeW2tvWEWwJH9nP\n"), 0o600, "more than 64 bytes"},
		{"world readable", bytes.Repeat([]byte{7}, 64), 0o644, "chmod 600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			key := filepath.Join(dir, "key")
			os.WriteFile(key, tc.data, tc.mode)
			os.Chmod(key, tc.mode)
			for _, args := range [][]string{{"id", "show", "--data", dir}, {"node", "--dev", "--data", dir}, {"id", "new", "--data", dir}} {
				r := pc2(t, "", args...)
				if r.code == 0 {
					t.Fatalf("%v succeeded on a damaged key", args)
				}
				if args[1] != "new" && !strings.Contains(r.stderr, tc.want) {
					t.Errorf("%v: stderr %q lacks %q", args, r.stderr, tc.want)
				}
			}
			if got, _ := os.ReadFile(key); !bytes.Equal(got, tc.data) {
				t.Fatal("damaged key file was changed")
			}
		})
	}
}

func TestBadConfigNamesFileAndLine(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "node.yaml")
	os.WriteFile(cfg, []byte("log:\n  level: info\n  levle: debug\n"), 0o600)
	r := pc2(t, "", "node", "--config", cfg)
	if r.code != 1 || !strings.Contains(r.stderr, cfg+":3: log: unknown field \"levle\" (did you mean \"level\"?)") {
		t.Fatalf("code %d: %s", r.code, r.stderr)
	}
}

func TestHelpEverywhere(t *testing.T) {
	var walk func(c *command, path []string)
	walk = func(c *command, path []string) {
		r := pc2(t, "", append(path, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("pc2 %v --help: code %d\n%s%s", path, r.code, r.stdout, r.stderr)
		}
		for _, s := range c.subs {
			walk(s, append(append([]string{}, path...), s.name))
		}
	}
	walk(root(), nil)
	if r := pc2(t, "", "frobnicate"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %s", r.code, r.stderr)
	}
	if r := pc2(t, "", "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "pc2 ") {
		t.Errorf("version: %d %q", r.code, r.stdout)
	}
}

// The devnet is `make run`: three real processes that come up, print their
// ids, and all go away on Ctrl-C.
func TestDevnetStartsAndStopsCleanly(t *testing.T) {
	data := t.TempDir()
	cmd := exec.Command(pc2Bin, "devnet", "--data", data)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 256)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	dids := map[string]bool{}
	var demoURL string
	var pingCmd []string
	timeout := time.After(60 * time.Second)
	for up := false; !up; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("devnet exited before it was up")
			}
			if m := regexp.MustCompile(`^  (supernode|alice|bob)\s+\w+\s+(did:boson:\w+)$`).FindStringSubmatch(l); m != nil {
				dids[m[1]] = true
			}
			if u := strings.TrimSpace(l); strings.HasPrefix(u, "https://alice.pc2.localhost:") {
				demoURL = u
			}
			if u := strings.Fields(l); len(u) > 2 && u[1] == "peer" && u[2] == "ping" {
				pingCmd = u[1:]
			}
			up = strings.Contains(l, "Press Ctrl-C to stop")
		case <-timeout:
			t.Fatal("devnet not up within 60s")
		}
	}
	if len(dids) != 3 {
		t.Fatalf("summary listed %v", dids)
	}
	go func() {
		for range lines { // keep the devnet's output flowing
		}
	}()
	// alice's demo page, through her tunnel (her registered target is a
	// dead port), at the printed URL.
	if demoURL == "" {
		t.Fatal("devnet printed no demo URL")
	}
	if _, err := exec.LookPath("curl"); err == nil {
		hostPort := strings.TrimSuffix(strings.TrimPrefix(demoURL, "https://"), "/")
		waitFor(t, "alice's demo page through the tunnel", 30*time.Second, func() bool {
			out, err := exec.Command("curl", "-sSk", "--max-time", "3", "--noproxy", "*", "--resolve", hostPort+":127.0.0.1", demoURL).Output()
			return err == nil && strings.Contains(string(out), "Hello from alice")
		})
	}
	// The node-to-node line it prints works: bob found by id, echoes
	// through the relay, then direct.
	if len(pingCmd) == 0 {
		t.Fatal("devnet printed no pc2 peer ping")
	}
	r := pc2(t, "", append(pingCmd, "--count", "8", "--interval", "100ms")...)
	if r.code != 0 || !strings.Contains(r.stdout, "8 echoes") || !strings.Contains(r.stdout, "path direct") {
		t.Errorf("%v: exit %d\n%s%s", pingCmd, r.code, r.stdout, r.stderr)
	}
	var pids []int
	for _, n := range []string{"supernode", "alice", "bob"} {
		info, err := host.ReadRunFile(filepath.Join(data, n))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, info.PID)
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("devnet exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("devnet did not stop within 30s of SIGINT")
	}
	for i, n := range []string{"supernode", "alice", "bob"} {
		if syscall.Kill(pids[i], 0) == nil {
			t.Errorf("%s (pid %d) still running", n, pids[i])
		}
		if _, err := os.Stat(filepath.Join(data, n, "run.json")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left its run file: it did not stop cleanly", n)
		}
	}
}
