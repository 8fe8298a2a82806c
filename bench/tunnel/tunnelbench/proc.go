package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// rssKB returns a process's VmRSS in KiB (0 if unknown).
func rssKB(pid int) int64 { return statusKB(pid, "VmRSS:") }

// anonKB returns a process's anonymous resident memory (RssAnon) in KiB:
// RSS without the mapped binary's pages, which depend on binary size.
func anonKB(pid int) int64 { return statusKB(pid, "RssAnon:") }

func statusKB(pid int, key string) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// IdleResult is one system's memory per idle tunnel.
type IdleResult struct {
	Name          string  `json:"name"`
	N             int     `json:"n"`
	ServerBaseKB  int64   `json:"server_base_kB"`
	ServerKB      int64   `json:"server_kB"`
	ClientsKB     int64   `json:"clients_kB"`
	PerTunnelKiB  float64 `json:"server_per_tunnel_KiB"`
	ClientPerKiB  float64 `json:"client_per_tunnel_KiB"`
	ConnectSecond float64 `json:"connect_s"`
}

// runIdle measures a fresh server's RSS, runs the client command (which
// prints "up N" when all its tunnels are up), lets both settle and measures
// again; the difference over N is the server's memory per idle tunnel.
func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	name := fs.String("name", "", "system name")
	pid := fs.Int("server-pid", 0, "server process")
	n := fs.Int("n", 1000, "tunnels the command brings up")
	settle := fs.Duration("settle", 5*time.Second, "wait after all are up")
	out := fs.String("json", "", "append the result here as one JSON line")
	_ = fs.Parse(args)
	argv := fs.Args()
	if len(argv) == 0 || *pid == 0 {
		return fmt.Errorf("idle: need -server-pid and a client command")
	}
	base := rssKB(*pid)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: clients did not come up: %w", *name, err)
	}
	if strings.TrimSpace(line) != fmt.Sprintf("up %d", *n) {
		return fmt.Errorf("%s: clients said %q", *name, line)
	}
	took := time.Since(start)
	time.Sleep(*settle)
	r := IdleResult{Name: *name, N: *n, ServerBaseKB: base, ServerKB: rssKB(*pid), ClientsKB: rssKB(cmd.Process.Pid), ConnectSecond: took.Seconds()}
	r.PerTunnelKiB = float64(r.ServerKB-r.ServerBaseKB) / float64(*n)
	r.ClientPerKiB = float64(r.ClientsKB) / float64(*n)
	fmt.Fprintf(os.Stderr, "idle %s: %d tunnels up in %.1fs; server RSS %d → %d KiB (%.1f KiB/tunnel); clients process %d KiB (%.1f KiB/tunnel)\n",
		r.Name, r.N, r.ConnectSecond, r.ServerBaseKB, r.ServerKB, r.PerTunnelKiB, r.ClientsKB, r.ClientPerKiB)
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		b, _ := json.Marshal(r)
		fmt.Fprintf(f, "%s\n", b)
	}
	return nil
}
