package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/host"
)

// dhtProc is one `pc2 dht` process of the multi-process test.
type dhtProc struct {
	i       int
	data    string
	cmd     *exec.Cmd
	info    host.Info
	addr    string // id@127.0.0.1:port
	port    string
	stderr  *bytes.Buffer
	done    chan error
	stopped bool
}

// startDHT starts `pc2 dht --dev` and waits for its readiness line.
func startDHT(t *testing.T, i int, data string, args ...string) *dhtProc {
	t.Helper()
	p, err := startDHTBin(pc2Bin, i, data, args...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startDHTBin starts bin as `pc2 dht --dev` and waits for its readiness
// line (safe to call from any goroutine).
func startDHTBin(bin string, i int, data string, args ...string) (*dhtProc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p := &dhtProc{i: i, data: data, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, append([]string{"dht", "--dev", "--data", data, "--log-level", "warn"}, args...)...)
	p.cmd.Env = append(os.Environ(), "PC2_READY_FD=3")
	p.cmd.ExtraFiles = []*os.File{w}
	p.cmd.Stderr = &lockedBuffer{b: p.stderr}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	w.Close()
	go func() { p.done <- p.cmd.Wait() }()
	lines := make(chan []byte, 1)
	go func() {
		defer r.Close()
		line, _ := bufio.NewReader(io.LimitReader(r, 64<<10)).ReadBytes('\n')
		lines <- line
	}()
	select {
	case line := <-lines:
		if err := json.Unmarshal(line, &p.info); err != nil {
			p.stop()
			return nil, fmt.Errorf("node %d: readiness line %q: %v\n%s", i, line, err, p.stderr)
		}
	case err := <-p.done:
		p.stopped = true
		return nil, fmt.Errorf("node %d exited before it was ready: %v\n%s", i, err, p.stderr)
	case <-time.After(30 * time.Second):
		p.stop()
		return nil, fmt.Errorf("node %d not ready after 30s\n%s", i, p.stderr)
	}
	a := p.info.Extra["dht.udp4"]
	if a == "" {
		p.stop()
		return nil, fmt.Errorf("node %d advertises no udp4 address: %+v", i, p.info.Extra)
	}
	p.addr = p.info.ID.String() + "@" + a
	p.port = a[strings.LastIndexByte(a, ':')+1:]
	return p, nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (p *dhtProc) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	p.stopped = true
}

func (p *dhtProc) stop() {
	if p.stopped {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.stopped = true
}

var tableSizeRE = regexp.MustCompile(`(?m)^pc2_dht_routing_table_size\{family="IPv4"\} (\d+)`)

// tableSize reads the node's IPv4 routing table size from its metrics.
func (p *dhtProc) tableSize() int {
	resp, err := http.Get(p.info.Metrics)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	m := tableSizeRE.FindSubmatch(b)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// pc2q runs pc2 like pc2() but reports problems in the result instead of
// failing the test, so it can run on worker goroutines.
func pc2q(args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pc2Bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		r.code, r.stderr = -1, err.Error()
	}
	if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "DATA RACE") {
		r.code = -2
	}
	return r
}

// parallel runs fn(i) for i in [0, n) on a few workers and returns the
// first failure message.
func parallel(n, workers int, fn func(i int) string) string {
	var mu sync.Mutex
	var first string
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if msg := fn(i); msg != "" {
					mu.Lock()
					if first == "" {
						first = msg
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// TestDHTMultiProcess runs 24 `pc2 dht` processes on loopback: values and
// a peer record put through one are found from every other; after kill -9
// of a third of them everything is still found from every survivor; a
// killed node restarted on its data directory serves its records and
// knows its contacts without any bootstrap node.
func TestDHTMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 24 processes")
	}
	const N = 24
	start := time.Now()
	root := t.TempDir()
	procs := make([]*dhtProc, N)
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range procs {
			if p != nil {
				wg.Add(1)
				go func() { defer wg.Done(); p.stop() }()
			}
		}
		wg.Wait()
	})
	procs[0] = startDHT(t, 0, filepath.Join(root, "n0"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var startErr error
	for i := 1; i < N; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := startDHTBin(pc2Bin, i, filepath.Join(root, fmt.Sprintf("n%d", i)), "--bootstrap", procs[0].addr)
			mu.Lock()
			procs[i] = p
			if err != nil && startErr == nil {
				startErr = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if startErr != nil {
		t.Fatal(startErr)
	}
	// Every node knows a good part of the network before we store.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range procs {
		for p.tableSize() < 12 {
			if time.Now().After(deadline) {
				t.Fatalf("node %d has %d contacts after 30s\n%s", p.i, p.tableSize(), p.stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("%d nodes up and joined in %v", N, time.Since(start).Round(time.Millisecond))

	// Put an immutable value, a signed value and a peer record through node 0.
	keyDir := filepath.Join(root, "owner")
	if r := pc2(t, "", "id", "new", "--data", keyDir, "--json"); r.code != 0 {
		t.Fatalf("id new: %s", r.stderr)
	}
	var owner identityView
	json.Unmarshal([]byte(pc2(t, "", "id", "show", "--data", keyDir, "--json").stdout), &owner)
	boot0 := procs[0].addr
	var put struct {
		ID     string `json:"id"`
		Stored int    `json:"stored"`
	}
	r := pc2(t, "", "dht", "put", "--dev", "--bootstrap", boot0, "--json", "an immutable value from node 0")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &put) != nil || put.Stored < 12 {
		t.Fatalf("put immutable: %d %s %s", r.code, r.stdout, r.stderr)
	}
	immID := put.ID
	r = pc2(t, "", "dht", "put", "--dev", "--bootstrap", boot0, "--signed", "--data", keyDir, "--json", "a signed value")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &put) != nil || put.Stored < 12 || put.ID != owner.ID {
		t.Fatalf("put signed: %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = pc2(t, "", "dht", "announce", "--dev", "--bootstrap", boot0, "--data", keyDir, "--json", "tcp://203.0.113.20:9090")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &put) != nil || put.Stored < 12 {
		t.Fatalf("announce: %d %s %s", r.code, r.stdout, r.stderr)
	}

	// findAll checks, through each live node as the only bootstrap node,
	// that both values and the peer record are found.
	findAll := func(phase string) {
		t.Helper()
		msg := parallel(N, 4, func(i int) string {
			p := procs[i]
			if p.stopped {
				return ""
			}
			r := pc2q("dht", "get", "--dev", "--bootstrap", p.addr, "--json", immID, owner.ID)
			var vs []valueView
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &vs) != nil || len(vs) != 2 ||
				vs[0].Text != "an immutable value from node 0" || vs[1].Text != "a signed value" {
				return fmt.Sprintf("%s: get through node %d: %d %s %s", phase, i, r.code, r.stdout, r.stderr)
			}
			r = pc2q("dht", "find-peer", "--dev", "--bootstrap", p.addr, "--json", owner.ID)
			var ps []peerView
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ps) != nil || len(ps) != 1 || ps[0].Endpoint != "tcp://203.0.113.20:9090" {
				return fmt.Sprintf("%s: find-peer through node %d: %d %s %s", phase, i, r.code, r.stdout, r.stderr)
			}
			return ""
		})
		if msg != "" {
			t.Fatal(msg)
		}
	}
	t0 := time.Now()
	findAll("all up")
	t.Logf("found from all %d nodes in %v", N, time.Since(t0).Round(time.Millisecond))

	// Which of the nodes to be killed holds both values (to restart later)?
	holder := -1
	for i := 2; i < N; i += 3 {
		r := pc2(t, "", "dht", "get", "--dev", "--direct", "--bootstrap", procs[i].addr, "--json", immID, owner.ID)
		var vs []valueView
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &vs) == nil && len(vs) == 2 {
			holder = i
			break
		}
	}
	if holder < 0 {
		t.Fatal("none of the nodes to kill holds the values (16 of 24 should)")
	}

	// kill -9 a third of the nodes.
	for i := 2; i < N; i += 3 {
		procs[i].kill9(t)
	}
	t0 = time.Now()
	findAll("a third killed")
	t.Logf("found from all %d survivors after kill -9 of %d in %v", N-N/3, N/3, time.Since(t0).Round(time.Millisecond))

	// Restart one killed node on its data directory and port, with no
	// bootstrap node: it serves its records and finds its contacts again.
	old := procs[holder]
	procs[holder] = startDHT(t, holder, old.data, "--port", old.port)
	x := procs[holder]
	if x.info.ID != old.info.ID {
		t.Fatalf("restarted node has a new id %s (was %s)", x.info.ID, old.info.ID)
	}
	r = pc2(t, "", "dht", "get", "--dev", "--direct", "--bootstrap", x.addr, "--json", immID, owner.ID)
	var vs []valueView
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &vs) != nil || len(vs) != 2 {
		t.Fatalf("restarted node lost its records: %d %s %s", r.code, r.stdout, r.stderr)
	}
	r = pc2(t, "", "dht", "find-peer", "--dev", "--direct", "--bootstrap", x.addr, "--json", owner.ID)
	if r.code != 0 || !strings.Contains(r.stdout, "203.0.113.20:9090") {
		t.Fatalf("restarted node lost its peer record: %d %s %s", r.code, r.stdout, r.stderr)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		r = pc2(t, "", "dht", "find-node", "--dev", "--direct", "--bootstrap", x.addr, "--json", owner.ID)
		var cs []contactView
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &cs) == nil && len(cs) > 0 {
			t.Logf("restarted node %d: records kept, %d contacts from its saved table", holder, len(cs))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node knows no contacts: %d %s %s\n%s", r.code, r.stdout, r.stderr, x.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range procs {
		if !p.stopped && strings.Contains(p.stderr.String(), "DATA RACE") {
			t.Fatalf("node %d: data race\n%s", p.i, p.stderr)
		}
	}
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// TestDHTCommandErrors: misuse is a usage error (status 2) with a clear
// message, before any network traffic.
func TestDHTCommandErrors(t *testing.T) {
	const id = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"dht", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"dht", "--bootstrap", "nope"}, "--bootstrap #1"},
		{[]string{"dht", "get", "--dev", id}, "give --bootstrap"},
		{[]string{"dht", "get", "--dev", "--bootstrap", id + "@127.0.0.1:1"}, "give at least one id"},
		{[]string{"dht", "get", "--bootstrap", id + "@127.0.0.1:1", id}, "use --dev"},
		{[]string{"dht", "get", "--dev", "--bootstrap", id + "@127.0.0.1:1", "not-an-id"}, "is not an id"},
		{[]string{"dht", "put", "--dev", "--bootstrap", id + "@127.0.0.1:1", "--seq", "3", "x"}, "--seq applies to --signed"},
		{[]string{"dht", "ping", "--dev"}, "give one node"},
		{[]string{"dht", "find-peer", "--dev", "--bootstrap", id + "@127.0.0.1:1"}, "give one peer id"},
	}
	for _, c := range cases {
		r := pc2(t, "", c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("pc2 %v: code %d, stderr %q, want %q", c.args, r.code, r.stderr, c.want)
		}
	}
	// A signed put needs a key file, and says where it looked.
	r := pc2(t, "", "dht", "put", "--dev", "--bootstrap", id+"@127.0.0.1:1", "--signed", "--data", t.TempDir(), "x")
	if r.code != 1 || !strings.Contains(r.stderr, "no key file") {
		t.Errorf("signed put without a key: %d %q", r.code, r.stderr)
	}
	// Nobody answers at the bootstrap address: a clear failure, not a hang.
	r = pc2(t, "", "dht", "get", "--dev", "--timeout", "3s", "--bootstrap", id+"@127.0.0.1:1", id)
	if r.code != 1 || !strings.Contains(r.stderr, "join") {
		t.Errorf("unreachable bootstrap: %d %q", r.code, r.stderr)
	}
}
