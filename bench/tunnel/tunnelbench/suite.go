package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type target struct {
	name      string
	addr      string
	serverPid int // 0: no process (direct)
	clientPid int
}

// Result is one target's figures.
type Result struct {
	Name             string  `json:"name"`
	Bulk1Gbps        float64 `json:"bulk1_Gbps"`
	Bulk8Gbps        float64 `json:"bulk8_Gbps"`
	Bulk1Rounds      []float64
	Bulk8Rounds      []float64
	ConnPS           float64 `json:"conn_per_s"`
	ConnRounds       []float64
	ConnErrors       int64   `json:"conn_errors"`
	SetupP50us       float64 `json:"setup_p50_us"`
	SetupP99us       float64 `json:"setup_p99_us"`
	RTTP50us         float64 `json:"rtt_p50_us"`
	RTTP99us         float64 `json:"rtt_p99_us"`
	ServerIdleKB     int64   `json:"server_idle_kB"`
	ClientIdleKB     int64   `json:"client_idle_kB"`
	ServerLoadKB     int64   `json:"server_1000rps_kB"`
	ServerAnonIdleKB int64   `json:"server_anon_idle_kB"`
	ServerAnonLoadKB int64   `json:"server_anon_1000rps_kB"`
	ClientLoadKB     int64   `json:"client_1000rps_kB"`
	LoadRate         float64 `json:"load_rate"`
	LoadErrors       int64   `json:"load_errors"`
	LoadP99us        float64 `json:"load_p99_us"`
	Idle             *IdleResult
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type suite struct {
	cfg       *tls.Config
	hello     []byte
	rounds    int
	bulkD     time.Duration
	rateD     time.Duration
	rateC     int
	latN      int
	loadRate  int
	loadD     time.Duration
	bulkConns []int
}

func runSuite(args []string) error {
	fs := flag.NewFlagSet("suite", flag.ExitOnError)
	direct := fs.String("direct", "127.0.0.1:47600", "backend address (the no-tunnel baseline)")
	dir := fs.String("dir", "", "directory with cert.pem")
	var targets multiFlag
	fs.Var(&targets, "target", "name=addr@serverpid,clientpid (repeatable)")
	s := &suite{bulkConns: []int{1, 8}}
	fs.IntVar(&s.rounds, "rounds", 3, "each rate and bulk measurement is split into rounds alternating targets")
	fs.DurationVar(&s.bulkD, "bulk-d", 6*time.Second, "bulk time per target and connection count (all rounds)")
	fs.DurationVar(&s.rateD, "rate-d", 6*time.Second, "connection-rate time per target (all rounds)")
	fs.IntVar(&s.rateC, "rate-c", 32, "concurrent connection workers")
	fs.IntVar(&s.latN, "latency-n", 500, "sequential samples per target for latency")
	fs.IntVar(&s.loadRate, "load-rate", 1000, "fixed request rate for the RSS-under-load measurement")
	fs.DurationVar(&s.loadD, "load-d", 6*time.Second, "duration of the fixed-rate load")
	idleFile := fs.String("idle", "", "JSON lines from `tunnelbench idle` to include")
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
	s.cfg = &tls.Config{ServerName: bulkName, RootCAs: pool}
	if s.hello, err = recordHello(); err != nil {
		return err
	}
	all := []target{{name: "direct", addr: *direct}}
	for _, t := range targets {
		name, rest, ok := strings.Cut(t, "=")
		if !ok {
			return fmt.Errorf("bad -target %q", t)
		}
		addr, pids, _ := strings.Cut(rest, "@")
		sp, cp, _ := strings.Cut(pids, ",")
		spid, _ := strconv.Atoi(sp)
		cpid, _ := strconv.Atoi(cp)
		all = append(all, target{name: name, addr: addr, serverPid: spid, clientPid: cpid})
	}
	rs, err := s.measureAll(all)
	if err != nil {
		return err
	}
	if *idleFile != "" {
		if err := attachIdle(rs, *idleFile); err != nil {
			return err
		}
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rs, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	printTables(os.Stdout, rs, s)
	return nil
}

func attachIdle(rs []Result, file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var ir IdleResult
		if err := json.Unmarshal([]byte(line), &ir); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for i := range rs {
			if rs[i].Name == ir.Name {
				rs[i].Idle = &ir
			}
		}
	}
	return nil
}

// recordHello captures one real Go ClientHello for helloName, to be
// replayed by the connection-rate test.
func recordHello() ([]byte, error) {
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: helloName, InsecureSkipVerify: true})
		c.Handshake()
		a.Close()
	}()
	var rec []byte
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		return nil, err
	}
	n := int(hdr[3])<<8 | int(hdr[4])
	body := make([]byte, n)
	if _, err := io.ReadFull(b, body); err != nil {
		return nil, err
	}
	rec = append(append(rec, hdr...), body...)
	b.Close()
	return rec, nil
}

// connect is one visitor connection: TCP connect, ClientHello, one byte
// back. It returns the time from dial to that byte.
func (s *suite) connect(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	tc := c.(*net.TCPConn)
	defer func() { tc.SetLinger(0); tc.Close() }() // RST: no TIME_WAIT on the load side
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(s.hello); err != nil {
		return 0, err
	}
	var one [1]byte
	if _, err := io.ReadFull(c, one[:]); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (s *suite) tlsConn(addr string) (*tls.Conn, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, s.cfg)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// bulk downloads through conns connections for d and returns Gbit/s.
func (s *suite) bulk(addr string, conns int, d time.Duration) (float64, error) {
	cs := make([]*tls.Conn, conns)
	for i := range cs {
		c, err := s.tlsConn(addr)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		if _, err := c.Write([]byte("1000000000000\n")); err != nil {
			return 0, err
		}
		cs[i] = c
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			_ = c.SetReadDeadline(end)
			for {
				n, err := c.Read(buf)
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(total.Load()) * 8 / time.Since(start).Seconds() / 1e9, nil
}

// rate runs c workers doing connect in a loop for d.
func (s *suite) rate(addr string, d time.Duration) (ok, fails int64, took time.Duration, first error) {
	var okN, failN atomic.Int64
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for range s.rateC {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if _, err := s.connect(addr); err != nil {
					failN.Add(1)
					once.Do(func() { first = err })
					continue
				}
				okN.Add(1)
			}
		}()
	}
	wg.Wait()
	return okN.Load(), failN.Load(), time.Since(start), first
}

func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(float64(len(ds)-1) * p)
	return float64(ds[i].Microseconds())
}

// fixedRate opens s.loadRate connections per second (open loop) for
// s.loadD and samples both processes' RSS; it returns the peak RSS.
func (s *suite) fixedRate(t target, r *Result) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lat []time.Duration
	var fails atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				r.ServerLoadKB = max(r.ServerLoadKB, rssKB(t.serverPid))
				r.ServerAnonLoadKB = max(r.ServerAnonLoadKB, anonKB(t.serverPid))
				r.ClientLoadKB = max(r.ClientLoadKB, rssKB(t.clientPid))
			}
		}
	}()
	interval := time.Second / time.Duration(s.loadRate)
	start := time.Now()
	sent := 0
	for next := start; time.Since(start) < s.loadD; next = next.Add(interval) {
		time.Sleep(time.Until(next))
		sent++
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := s.connect(t.addr)
			if err != nil {
				fails.Add(1)
				return
			}
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(stop)
	<-sampled
	r.LoadRate = float64(len(lat)) / took.Seconds()
	r.LoadErrors = fails.Load()
	r.LoadP99us = pct(lat, 0.99)
}

func (s *suite) measureAll(ts []target) ([]Result, error) {
	rs := make([]Result, len(ts))
	for i, t := range ts {
		rs[i].Name = t.name
		if _, err := s.connect(t.addr); err != nil {
			return nil, fmt.Errorf("%s: first connection: %w", t.name, err)
		}
		c, err := s.tlsConn(t.addr)
		if err != nil {
			return nil, fmt.Errorf("%s: first TLS connection: %w", t.name, err)
		}
		c.Close()
	}
	// 0. Idle RSS: servers and clients with their one tunnel, before load.
	time.Sleep(time.Second)
	for i, t := range ts {
		rs[i].ServerIdleKB = rssKB(t.serverPid)
		rs[i].ServerAnonIdleKB = anonKB(t.serverPid)
		rs[i].ClientIdleKB = rssKB(t.clientPid)
	}
	// 1. RSS at a fixed request rate (before the bulk tests grow the heaps).
	log.Printf("fixed rate: %d connections/s for %s per target", s.loadRate, s.loadD)
	for i, t := range ts {
		s.fixedRate(t, &rs[i])
		time.Sleep(500 * time.Millisecond)
	}
	// 2. Latency, interleaved one sample per target in turn.
	log.Printf("latency: %d sequential connections and %d round trips per target, interleaved", s.latN, s.latN)
	setup := make([][]time.Duration, len(ts))
	rtt := make([][]time.Duration, len(ts))
	conns := make([]*tls.Conn, len(ts))
	for i, t := range ts {
		c, err := s.tlsConn(t.addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		defer c.Close()
		conns[i] = c
	}
	buf := make([]byte, 64)
	for range s.latN {
		for i, t := range ts {
			d, err := s.connect(t.addr)
			if err != nil {
				return nil, fmt.Errorf("%s: latency connect: %w", t.name, err)
			}
			setup[i] = append(setup[i], d)
			start := time.Now()
			if _, err := conns[i].Write([]byte("64\n")); err != nil {
				return nil, fmt.Errorf("%s: rtt write: %w", t.name, err)
			}
			if _, err := io.ReadFull(conns[i], buf); err != nil {
				return nil, fmt.Errorf("%s: rtt read: %w", t.name, err)
			}
			rtt[i] = append(rtt[i], time.Since(start))
		}
	}
	for i := range ts {
		rs[i].SetupP50us, rs[i].SetupP99us = pct(setup[i], 0.50), pct(setup[i], 0.99)
		rs[i].RTTP50us, rs[i].RTTP99us = pct(rtt[i], 0.50), pct(rtt[i], 0.99)
		conns[i].Close()
	}
	// 3. Connection rate, rounds alternating targets.
	log.Printf("connection rate: %d rounds of %s per target, %d workers", s.rounds, s.rateD/time.Duration(s.rounds), s.rateC)
	okN := make([]int64, len(ts))
	el := make([]time.Duration, len(ts))
	for round := range s.rounds {
		for k := range ts {
			i := (k + round) % len(ts)
			ok, fails, took, first := s.rate(ts[i].addr, s.rateD/time.Duration(s.rounds))
			okN[i] += ok
			el[i] += took
			rs[i].ConnErrors += fails
			rs[i].ConnRounds = append(rs[i].ConnRounds, float64(ok)/took.Seconds())
			if first != nil {
				log.Printf("%s: %d connection errors, first: %v", ts[i].name, fails, first)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	for i := range ts {
		rs[i].ConnPS = float64(okN[i]) / el[i].Seconds()
	}
	// 4. Bulk, rounds alternating targets.
	for _, n := range s.bulkConns {
		log.Printf("bulk: %d connection(s), %d rounds of %s per target", n, s.rounds, s.bulkD/time.Duration(s.rounds))
		sum := make([]float64, len(ts))
		for round := range s.rounds {
			for k := range ts {
				i := (k + round) % len(ts)
				g, err := s.bulk(ts[i].addr, n, s.bulkD/time.Duration(s.rounds))
				if err != nil {
					return nil, fmt.Errorf("%s: bulk %d: %w", ts[i].name, n, err)
				}
				sum[i] += g
				if n == 1 {
					rs[i].Bulk1Rounds = append(rs[i].Bulk1Rounds, g)
				} else {
					rs[i].Bulk8Rounds = append(rs[i].Bulk8Rounds, g)
				}
				time.Sleep(300 * time.Millisecond)
			}
		}
		for i := range ts {
			if n == 1 {
				rs[i].Bulk1Gbps = sum[i] / float64(s.rounds)
			} else {
				rs[i].Bulk8Gbps = sum[i] / float64(s.rounds)
			}
		}
	}
	return rs, nil
}

// spread is the min–max over rounds, printed with format f.
func spread(v []float64, f string) string {
	if len(v) < 2 {
		return ""
	}
	return fmt.Sprintf(" ("+f+"–"+f+")", slices.Min(v), slices.Max(v))
}

func mib(kb int64) string {
	if kb == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", float64(kb)/1024)
}

func printTables(w io.Writer, rs []Result, s *suite) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, "| metric |")
	for _, r := range rs {
		fmt.Fprintf(bw, " %s |", r.Name)
	}
	fmt.Fprintf(bw, "\n|---|")
	for range rs {
		fmt.Fprintf(bw, "---|")
	}
	row := func(name string, f func(r Result) string) {
		fmt.Fprintf(bw, "\n| %s |", name)
		for _, r := range rs {
			fmt.Fprintf(bw, " %s |", f(r))
		}
	}
	d := rs[0]
	row("bulk 1 conn Gbit/s (round min–max)", func(r Result) string { return fmt.Sprintf("%.2f%s", r.Bulk1Gbps, spread(r.Bulk1Rounds, "%.2f")) })
	row("bulk 8 conns Gbit/s", func(r Result) string { return fmt.Sprintf("%.2f%s", r.Bulk8Gbps, spread(r.Bulk8Rounds, "%.2f")) })
	row(fmt.Sprintf("connections/s, ClientHello → first byte (c=%d)", s.rateC), func(r Result) string {
		return fmt.Sprintf("%.0f%s", r.ConnPS, spread(r.ConnRounds, "%.0f"))
	})
	row("connection errors", func(r Result) string { return strconv.FormatInt(r.ConnErrors, 10) })
	row("connect → first byte p50 / p99 µs", func(r Result) string { return fmt.Sprintf("%.0f / %.0f", r.SetupP50us, r.SetupP99us) })
	row("added vs direct p50 / p99 µs", func(r Result) string {
		return fmt.Sprintf("%+.0f / %+.0f", r.SetupP50us-d.SetupP50us, r.SetupP99us-d.SetupP99us)
	})
	row("request round trip (64 B, open TLS conn) p50 / p99 µs", func(r Result) string { return fmt.Sprintf("%.0f / %.0f", r.RTTP50us, r.RTTP99us) })
	row("added vs direct p50 / p99 µs ", func(r Result) string {
		return fmt.Sprintf("%+.0f / %+.0f", r.RTTP50us-d.RTTP50us, r.RTTP99us-d.RTTP99us)
	})
	row("server RSS MiB idle (1 tunnel)", func(r Result) string { return mib(r.ServerIdleKB) })
	row("server anonymous RSS MiB idle (RSS without binary pages)", func(r Result) string { return mib(r.ServerAnonIdleKB) })
	row("client RSS MiB idle", func(r Result) string { return mib(r.ClientIdleKB) })
	row(fmt.Sprintf("server RSS MiB peak at %d conn/s", s.loadRate), func(r Result) string { return mib(r.ServerLoadKB) })
	row(fmt.Sprintf("server anonymous RSS MiB peak at %d conn/s", s.loadRate), func(r Result) string { return mib(r.ServerAnonLoadKB) })
	row(fmt.Sprintf("client RSS MiB peak at %d conn/s", s.loadRate), func(r Result) string { return mib(r.ClientLoadKB) })
	row("achieved rate / errors / p99 µs", func(r Result) string {
		return fmt.Sprintf("%.0f / %d / %.0f", r.LoadRate, r.LoadErrors, r.LoadP99us)
	})
	row("server RSS per idle tunnel KiB (n tunnels)", func(r Result) string {
		if r.Idle == nil {
			return "–"
		}
		return fmt.Sprintf("%.1f (%d)", r.Idle.PerTunnelKiB, r.Idle.N)
	})
	row("client process RSS per tunnel KiB", func(r Result) string {
		if r.Idle == nil {
			return "–"
		}
		return fmt.Sprintf("%.1f", r.Idle.ClientPerKiB)
	})
	fmt.Fprintf(bw, "\n\nRatios ours/peer (rates: >1 better for ours; RSS: <1 better for ours):\n\n")
	var ours []Result
	var peers []Result
	for _, r := range rs[1:] {
		if strings.HasPrefix(r.Name, "ours") {
			ours = append(ours, r)
		} else {
			peers = append(peers, r)
		}
	}
	ratio := func(a, b float64) string {
		if b == 0 || a == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	fmt.Fprintf(bw, "| ours / peer | bulk 1 | bulk 8 | conn/s | server RSS idle (anon) | server RSS at load (anon) | RSS per idle tunnel |\n|---|---|---|---|---|---|---|\n")
	for _, o := range ours {
		for _, p := range append([]Result{d}, peers...) {
			per := "–"
			if o.Idle != nil && p.Idle != nil {
				per = ratio(o.Idle.PerTunnelKiB, p.Idle.PerTunnelKiB)
			}
			fmt.Fprintf(bw, "| %s / %s | %s | %s | %s | %s (%s) | %s (%s) | %s |\n", o.Name, p.Name,
				ratio(o.Bulk1Gbps, p.Bulk1Gbps), ratio(o.Bulk8Gbps, p.Bulk8Gbps), ratio(o.ConnPS, p.ConnPS),
				ratio(float64(o.ServerIdleKB), float64(p.ServerIdleKB)), ratio(float64(o.ServerAnonIdleKB), float64(p.ServerAnonIdleKB)),
				ratio(float64(o.ServerLoadKB), float64(p.ServerLoadKB)), ratio(float64(o.ServerAnonLoadKB), float64(p.ServerAnonLoadKB)), per)
		}
	}
}
