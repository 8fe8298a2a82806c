// Command snibench is the load generator, TLS backend and our proxy for the
// SNI passthrough peer benchmark (bench/sni/run.sh). It measures every proxy
// against the same loopback TLS backend in one run so the results are
// comparable ratios.
//
//	snibench cert     -dir D                        write cert.pem/key.pem for *.bench.test
//	snibench backend  -listen A -dir D              TLS backend: handshakes, bulk bodies
//	snibench proxy    -listen A -backend B          our gateway/sniproxy with a suffix router
//	snibench suite    -direct B -target name=addr[@pid] ...   run all measurements, print Markdown
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/gateway/testcert"
)

const benchName = "www.bench.test"

func main() {
	log.SetFlags(0)
	log.SetPrefix("snibench: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: snibench cert|backend|proxy|suite [flags]")
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "cert":
		err = runCert(args)
	case "backend":
		err = runBackend(args)
	case "proxy":
		err = runProxy(args)
	case "suite":
		err = runSuite(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runCert(args []string) error {
	fs := flag.NewFlagSet("cert", flag.ExitOnError)
	dir := fs.String("dir", "", "output directory")
	_ = fs.Parse(args)
	cert, _, err := testcert.New(benchName, "*.bench.test")
	if err != nil {
		return err
	}
	c, k, err := testcert.PEM(cert)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "cert.pem"), c, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*dir, "key.pem"), k, 0o600)
}

// runBackend serves TLS. After the handshake a client may send lines with
// a byte count; the backend answers each with that many bytes.
func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:47500", "listen address")
	dir := fs.String("dir", "", "directory with cert.pem and key.pem")
	_ = fs.Parse(args)
	cert, err := tls.LoadX509KeyPair(filepath.Join(*dir, "cert.pem"), filepath.Join(*dir, "key.pem"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	context.AfterFunc(ctx, func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	body := make([]byte, 1<<20)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			tc := tls.Server(c, cfg)
			r := bufio.NewReader(tc)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
				if err != nil {
					return
				}
				for n > 0 {
					k := min(n, int64(len(body)))
					if _, err := tc.Write(body[:k]); err != nil {
						return
					}
					n -= k
				}
			}
		}()
	}
}

type suffixRouter struct {
	suffix string
	target sniproxy.Target
}

func (r suffixRouter) Route(_ context.Context, name string) (sniproxy.Target, error) {
	if strings.HasSuffix(name, r.suffix) {
		return r.target, nil
	}
	return sniproxy.Target{}, sniproxy.ErrUnknownName
}

func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:47443", "listen address")
	backend := fs.String("backend", "127.0.0.1:47500", "backend address")
	suffix := fs.String("suffix", ".bench.test", "server-name suffix routed to the backend")
	maxConns := fs.Int("maxconns", 9900, "concurrent connection bound")
	perIP := fs.Int("pending-per-ip", 1024, "pending hellos per source IP (the load comes from one IP)")
	_ = fs.Parse(args)
	srv, err := sniproxy.New(sniproxy.Config{
		Router:          suffixRouter{suffix: *suffix, target: sniproxy.Target{Addr: *backend}},
		MaxConns:        *maxConns,
		MaxPendingPerIP: *perIP,
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	return srv.Serve(ctx, ln)
}

// ---- suite ----

type target struct {
	name string
	addr string
	pid  int // 0: no RSS measurement (direct)
}

type result struct {
	Name         string  `json:"name"`
	HandshakesPS float64 `json:"handshakes_per_s"`
	HSErrors     int64   `json:"handshake_errors"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	Bulk1MBps    float64 `json:"bulk1_MBps"`
	Bulk8MBps    float64 `json:"bulk8_MBps"`
	IdleConns    int     `json:"idle_conns"`
	RSSBaseKB    int64   `json:"rss_base_kB"`
	RSSIdleKB    int64   `json:"rss_idle_kB"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type suite struct {
	cfg         *tls.Config
	concurrency int
	duration    time.Duration
	latencyN    int
	bulkTime    time.Duration
	idle        int
	rounds      int
}

func runSuite(args []string) error {
	fs := flag.NewFlagSet("suite", flag.ExitOnError)
	direct := fs.String("direct", "127.0.0.1:47500", "backend address (the no-proxy baseline)")
	dir := fs.String("dir", "", "directory with cert.pem")
	var targets multiFlag
	fs.Var(&targets, "target", "name=addr@pid, repeatable")
	s := &suite{}
	fs.IntVar(&s.concurrency, "c", 64, "concurrent handshake workers")
	fs.DurationVar(&s.duration, "d", 10*time.Second, "handshake-rate duration per target")
	fs.IntVar(&s.latencyN, "latency-n", 1000, "sequential handshakes for the latency percentiles")
	fs.DurationVar(&s.bulkTime, "bulk-d", 6*time.Second, "bulk throughput duration per stream count")
	fs.IntVar(&s.idle, "idle", 9000, "idle TLS connections held for the RSS measurement")
	fs.IntVar(&s.rounds, "rounds", 5, "rate and bulk time is split into this many rounds, alternating targets, so background load hits all alike")
	jsonOut := fs.String("json", "", "also write raw results here")
	_ = fs.Parse(args)

	pem, err := os.ReadFile(filepath.Join(*dir, "cert.pem"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return errors.New("no certificate in cert.pem")
	}
	s.cfg = &tls.Config{ServerName: benchName, RootCAs: pool}

	all := []target{{name: "direct", addr: *direct}}
	for _, t := range targets {
		name, rest, ok := strings.Cut(t, "=")
		if !ok {
			return fmt.Errorf("bad -target %q", t)
		}
		addr, pidStr, _ := strings.Cut(rest, "@")
		pid, _ := strconv.Atoi(pidStr)
		all = append(all, target{name: name, addr: addr, pid: pid})
	}
	results, err := s.measureAll(all)
	if err != nil {
		return err
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	printTable(os.Stdout, results, s)
	return nil
}

func (s *suite) handshake(addr string) (time.Duration, error) {
	start := time.Now()
	d := net.Dialer{Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, s.cfg)
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// measureAll runs every measurement. CPU-bound ones are interleaved: rate
// and bulk alternate targets in short rounds and latency alternates per
// handshake, because this machine is shared and its background load drifts.
func (s *suite) measureAll(ts []target) ([]result, error) {
	rs := make([]result, len(ts))
	for i, t := range ts {
		rs[i].Name = t.name
		if _, err := s.handshake(t.addr); err != nil {
			return nil, fmt.Errorf("%s: first handshake: %w", t.name, err)
		}
	}

	// 1. New-connection rate at fixed concurrency.
	log.Printf("handshake rate: %d rounds of %s per target, c=%d", s.rounds, s.duration/time.Duration(s.rounds), s.concurrency)
	okN := make([]int64, len(ts))
	elapsed := make([]time.Duration, len(ts))
	for round := range s.rounds {
		for i := range ts {
			i := (i + round) % len(ts)
			n, fails, took, firstErr := s.rate(ts[i].addr, s.duration/time.Duration(s.rounds))
			okN[i] += n
			rs[i].HSErrors += fails
			elapsed[i] += took
			if firstErr != nil {
				log.Printf("%s: %d handshake errors, first: %v", ts[i].name, fails, firstErr)
			}
			time.Sleep(200 * time.Millisecond) // let closes settle
		}
	}
	for i := range ts {
		rs[i].HandshakesPS = float64(okN[i]) / elapsed[i].Seconds()
	}

	// 2. Sequential handshake latency, one handshake per target in turn.
	log.Printf("latency: %d sequential handshakes per target, interleaved", s.latencyN)
	lat := make([][]time.Duration, len(ts))
	for range s.latencyN {
		for i, t := range ts {
			d, err := s.handshake(t.addr)
			if err != nil {
				return nil, fmt.Errorf("%s: latency handshake: %w", t.name, err)
			}
			lat[i] = append(lat[i], d)
		}
	}
	for i := range ts {
		l := lat[i]
		sort.Slice(l, func(a, b int) bool { return l[a] < l[b] })
		rs[i].P50us = float64(l[len(l)/2].Microseconds())
		rs[i].P99us = float64(l[len(l)*99/100].Microseconds())
	}

	// 3. Bulk throughput, 1 and 8 streams.
	log.Printf("bulk: %d rounds of %s per target and stream count", s.rounds, s.bulkTime/time.Duration(s.rounds))
	for _, streams := range []int{1, 8} {
		bytesN := make([]int64, len(ts))
		took := make([]time.Duration, len(ts))
		for round := range s.rounds {
			for i := range ts {
				i := (i + round) % len(ts)
				n, d, err := s.bulk(ts[i].addr, streams, s.bulkTime/time.Duration(s.rounds))
				if err != nil {
					return nil, fmt.Errorf("%s: %w", ts[i].name, err)
				}
				bytesN[i] += n
				took[i] += d
			}
		}
		for i := range ts {
			mbps := float64(bytesN[i]) / took[i].Seconds() / 1e6
			if streams == 1 {
				rs[i].Bulk1MBps = mbps
			} else {
				rs[i].Bulk8MBps = mbps
			}
		}
	}

	// 4. RSS under idle connections (memory, not CPU: one target at a time).
	for i, t := range ts {
		if t.pid <= 0 || s.idle <= 0 {
			continue
		}
		log.Printf("%s: RSS with %d idle connections", t.name, s.idle)
		rs[i].RSSBaseKB = treeRSS(t.pid)
		conns, err := s.openIdle(t.addr, s.idle)
		if err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		time.Sleep(2 * time.Second)
		rs[i].RSSIdleKB = treeRSS(t.pid)
		rs[i].IdleConns = len(conns)
		closeAll(conns)
		time.Sleep(2 * time.Second)
	}
	return rs, nil
}

// rate runs full handshakes with s.concurrency workers for d.
func (s *suite) rate(addr string, d time.Duration) (ok, fail int64, took time.Duration, firstErr error) {
	var okN, failN atomic.Int64
	var errOnce sync.Once
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for range s.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := s.handshake(addr); err != nil {
					failN.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				okN.Add(1)
			}
		}()
	}
	wg.Wait()
	return okN.Load(), failN.Load(), time.Since(start), firstErr
}

// bulk runs streams TLS connections that each request 16 MiB bodies for
// about d and returns the bytes received and the time taken.
func (s *suite) bulk(addr string, streams int, d time.Duration) (int64, time.Duration, error) {
	var total atomic.Int64
	errc := make(chan error, streams)
	deadline := time.Now().Add(d)
	start := time.Now()
	for range streams {
		go func() {
			raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				errc <- err
				return
			}
			defer raw.Close()
			_ = raw.SetDeadline(deadline.Add(30 * time.Second))
			c := tls.Client(raw, s.cfg)
			const chunk = 16 << 20
			for time.Now().Before(deadline) {
				if _, err := fmt.Fprintf(c, "%d\n", chunk); err != nil {
					errc <- err
					return
				}
				n, err := io.CopyN(io.Discard, c, chunk)
				total.Add(n)
				if err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range streams {
		if err := <-errc; err != nil {
			return 0, 0, fmt.Errorf("bulk: %w", err)
		}
	}
	return total.Load(), time.Since(start), nil
}

func (s *suite) openIdle(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
					c := tls.Client(raw, s.cfg)
					if err = c.Handshake(); err == nil {
						_ = raw.SetDeadline(time.Time{})
						conns[i] = c
						continue
					}
					raw.Close()
				}
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("idle connection %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// treeRSS sums VmRSS (kB) of pid and all its descendants.
func treeRSS(root int) int64 {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may contain spaces; fields follow the last ')'.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 {
			ppid, _ := strconv.Atoi(fields[1])
			children[ppid] = append(children[ppid], pid)
		}
	}
	var sum int64
	var walk func(int)
	walk = func(p int) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
					sum += kb
				}
			}
		}
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(root)
	return sum
}

func printTable(w io.Writer, rs []result, s *suite) {
	fmt.Fprintf(w, "| metric | %s |\n", joinNames(rs))
	fmt.Fprintf(w, "|---|%s\n", strings.Repeat("---|", len(rs)))
	row := func(label string, f func(r result) string) {
		cells := make([]string, len(rs))
		for i, r := range rs {
			cells[i] = f(r)
		}
		fmt.Fprintf(w, "| %s | %s |\n", label, strings.Join(cells, " | "))
	}
	row(fmt.Sprintf("full TLS handshakes/s (c=%d, %s in %d rounds)", s.concurrency, s.duration, s.rounds), func(r result) string {
		if r.HSErrors > 0 {
			return fmt.Sprintf("%.0f (%d errors)", r.HandshakesPS, r.HSErrors)
		}
		return fmt.Sprintf("%.0f", r.HandshakesPS)
	})
	row(fmt.Sprintf("handshake p50 µs (sequential, interleaved, n=%d)", s.latencyN), func(r result) string { return fmt.Sprintf("%.0f", r.P50us) })
	row("handshake p99 µs", func(r result) string { return fmt.Sprintf("%.0f", r.P99us) })
	d := rs[0]
	row("added p50 / p99 µs vs direct", func(r result) string {
		return fmt.Sprintf("%+.0f / %+.0f", r.P50us-d.P50us, r.P99us-d.P99us)
	})
	row(fmt.Sprintf("bulk 1 stream MB/s (%s in %d rounds)", s.bulkTime, s.rounds), func(r result) string { return fmt.Sprintf("%.0f", r.Bulk1MBps) })
	row("bulk 8 streams MB/s", func(r result) string { return fmt.Sprintf("%.0f", r.Bulk8MBps) })
	row("proxy RSS MiB: before / with idle conns", func(r result) string {
		if r.IdleConns == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f / %.1f (%d conns, %.1f KiB/conn)", float64(r.RSSBaseKB)/1024, float64(r.RSSIdleKB)/1024,
			r.IdleConns, float64(r.RSSIdleKB-r.RSSBaseKB)/float64(r.IdleConns))
	})

	// Ratios ours / each peer.
	var ours *result
	for i := range rs {
		if rs[i].Name == "ours" {
			ours = &rs[i]
		}
	}
	if ours == nil {
		return
	}
	fmt.Fprintf(w, "\nRatios ours/peer (>1 is better for ours on rates and throughput; <1 is better for ours on latency and RSS):\n\n")
	fmt.Fprintf(w, "| peer | handshakes/s | added p50 latency | p99 | bulk 1 | bulk 8 | idle RSS growth |\n|---|---|---|---|---|---|---|\n")
	ratio := func(a, b float64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for _, r := range rs {
		if r.Name == "ours" || r.Name == "direct" {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Name,
			ratio(ours.HandshakesPS, r.HandshakesPS),
			ratio(ours.P50us-d.P50us, r.P50us-d.P50us),
			ratio(ours.P99us, r.P99us),
			ratio(ours.Bulk1MBps, r.Bulk1MBps),
			ratio(ours.Bulk8MBps, r.Bulk8MBps),
			ratio(float64(ours.RSSIdleKB-ours.RSSBaseKB), float64(r.RSSIdleKB-r.RSSBaseKB)))
	}
}

func joinNames(rs []result) string {
	names := make([]string, len(rs))
	for i, r := range rs {
		names[i] = r.Name
	}
	return strings.Join(names, " | ")
}
