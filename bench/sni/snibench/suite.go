package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type target struct {
	name string
	addr string // raw-protocol address (through the proxy, or the raw backend)
	tls  string // TLS-backend address through the same proxy; "" skips TLS bulk
	pid  int    // 0: no memory measurements (direct)
}

type result struct {
	Name string `json:"name"`

	ConnsPerS   float64 `json:"conns_per_s"`
	ConnErrors  int64   `json:"conn_errors"`
	P50us       float64 `json:"first_byte_p50_us"`
	P99us       float64 `json:"first_byte_p99_us"`
	Bulk1MBps   float64 `json:"bulk1_MBps"`
	Bulk8MBps   float64 `json:"bulk8_MBps"`
	TLSBulk1MBs float64 `json:"tls_bulk1_MBps,omitempty"`
	TLSBulk8MBs float64 `json:"tls_bulk8_MBps,omitempty"`

	RSSStartKB int64 `json:"rss_start_kB"`
	RSSLoadKB  int64 `json:"rss_max_under_load_kB"`
	RSSBaseKB  int64 `json:"rss_before_idle_kB"`
	RSSIdleKB  int64 `json:"rss_idle_kB"`
	IdleConns  int   `json:"idle_conns"`
	IdleKernKB int64 `json:"idle_kernel_tcp_kB"`

	// CPU time (clock ticks) used during the rate and raw bulk phases by
	// the proxy, the backend and the load generator.
	RateCPU  [3]int64 `json:"rate_cpu_ticks"`
	Bulk1CPU [3]int64 `json:"bulk1_cpu_ticks"`
	Bulk8CPU [3]int64 `json:"bulk8_cpu_ticks"`
	RateN    int64    `json:"rate_conns"`
	Bulk1B   int64    `json:"bulk1_bytes"`
	Bulk8B   int64    `json:"bulk8_bytes"`

	Slow *slowResult `json:"slowloris,omitempty"`
}

type slowResult struct {
	Target     int     `json:"target"`
	Held       int64   `json:"held"` // pending connections open when RSS was read
	Reopened   int64   `json:"reopened"`
	DialFails  int64   `json:"dial_fails"`
	RSSBaseKB  int64   `json:"rss_base_kB"`
	RSSKB      int64   `json:"rss_kB"`
	KernBaseKB int64   `json:"kernel_tcp_base_kB"`
	KernKB     int64   `json:"kernel_tcp_kB"`
	LegitN     int     `json:"legit_n"`
	LegitFail  int     `json:"legit_failed"`
	LegitErr   string  `json:"legit_first_error,omitempty"`
	LegitP50us float64 `json:"legit_p50_us"`
	LegitP99us float64 `json:"legit_p99_us"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type suite struct {
	hello       []byte
	tlsCfg      *tls.Config
	concurrency int
	rateTime    time.Duration
	latencyN    int
	bulkTime    time.Duration
	tlsBulkTime time.Duration
	idle        int
	idleWait    time.Duration
	slow        int
	slowPerIP   int
	slowLegitN  int
	rounds      int
	backendPID  int
	phases      map[string]bool
}

func runSuite(args []string) error {
	fs := flag.NewFlagSet("suite", flag.ExitOnError)
	direct := fs.String("direct", "127.0.0.1:47500", "raw backend address (the no-proxy baseline)")
	directTLS := fs.String("direct-tls", "", "TLS backend address; empty skips the TLS bulk variant")
	dir := fs.String("dir", "", "directory with cert.pem (TLS variant)")
	var targets multiFlag
	fs.Var(&targets, "target", "name=addr[@pid], repeatable; the proxy at addr routes "+benchName+" to the raw backend and "+tlsName+" to the TLS backend")
	s := &suite{}
	fs.IntVar(&s.concurrency, "c", 64, "concurrent connection workers for the rate test")
	fs.DurationVar(&s.rateTime, "d", 10*time.Second, "connection-rate time per target (split into rounds)")
	fs.IntVar(&s.latencyN, "latency-n", 2000, "sequential connections per target for the latency percentiles")
	fs.DurationVar(&s.bulkTime, "bulk-d", 10*time.Second, "raw bulk time per target and stream count (split into rounds)")
	fs.DurationVar(&s.tlsBulkTime, "tls-bulk-d", 5*time.Second, "TLS bulk time per target and stream count")
	fs.IntVar(&s.idle, "idle", 9000, "idle established connections for the memory measurement")
	fs.DurationVar(&s.idleWait, "idle-wait", 5*time.Second, "how long the idle connections stay idle before RSS is read")
	fs.IntVar(&s.slow, "slowloris", 10000, "pending connections that never finish their ClientHello")
	fs.IntVar(&s.slowPerIP, "slowloris-per-ip", 25, "pending connections per loopback source address")
	fs.IntVar(&s.slowLegitN, "slowloris-legit-n", 200, "legitimate connections timed while the slowloris runs")
	fs.IntVar(&s.rounds, "rounds", 5, "rate and bulk time is split into this many rounds, alternating targets")
	fs.IntVar(&s.backendPID, "backend-pid", 0, "raw backend's pid, for its CPU time")
	jsonOut := fs.String("json", "", "also write raw results here")
	jsonIn := fs.String("in", "", "merge into the results of an earlier run (JSON), e.g. to measure memory on freshly started proxies")
	phases := fs.String("phases", "rate,latency,bulk,tls,idle,slowloris", "phases to run")
	quiet := fs.Bool("no-report", false, "write the JSON only")
	_ = fs.Parse(args)

	s.hello = cannedHello()
	if *directTLS != "" {
		pem, err := os.ReadFile(filepath.Join(*dir, "cert.pem"))
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return errors.New("no certificate in cert.pem")
		}
		s.tlsCfg = &tls.Config{ServerName: tlsName, RootCAs: pool}
	}

	all := []target{{name: "direct", addr: *direct, tls: *directTLS}}
	for _, t := range targets {
		name, rest, ok := strings.Cut(t, "=")
		if !ok {
			return fmt.Errorf("bad -target %q", t)
		}
		addr, pidStr, _ := strings.Cut(rest, "@")
		pid, _ := strconv.Atoi(pidStr)
		t := target{name: name, addr: addr, pid: pid}
		if *directTLS != "" && !strings.HasPrefix(name, "plain") { // the plain relay cannot route by name
			t.tls = addr
		}
		all = append(all, t)
	}
	log.Printf("cores %s; load average at start: %s", os.Getenv("NPROC"), loadavg())
	s.phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		s.phases[strings.TrimSpace(p)] = true
	}
	var prev []result
	if *jsonIn != "" {
		b, err := os.ReadFile(*jsonIn)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &prev); err != nil {
			return fmt.Errorf("%s: %w", *jsonIn, err)
		}
		if len(prev) != len(all) {
			return fmt.Errorf("%s has %d targets, this run %d", *jsonIn, len(prev), len(all))
		}
	}
	results, err := s.measureAll(all, prev)
	if err != nil {
		return err
	}
	log.Printf("load average at end: %s", loadavg())
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(results, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if !*quiet {
		printReport(os.Stdout, results, s)
	}
	return nil
}

// interleave runs f for every target in rounds, rotating the order each
// round, because this machine is shared and its background load drifts.
func (s *suite) interleave(ts []target, f func(i int) error) error {
	for round := range s.rounds {
		for k := range ts {
			i := (k + round) % len(ts)
			if err := f(i); err != nil {
				return fmt.Errorf("%s: %w", ts[i].name, err)
			}
			time.Sleep(100 * time.Millisecond) // let closes settle
		}
	}
	return nil
}

// measureAll runs the selected phases (-phases) on all targets; rs holds
// earlier results to merge into (-in), or nil.
func (s *suite) measureAll(ts []target, rs []result) ([]result, error) {
	if rs == nil {
		rs = make([]result, len(ts))
	}
	for i, t := range ts {
		rs[i].Name = t.name
		if err := checkRawBackend(t.addr, s.hello); err != nil {
			return nil, fmt.Errorf("%s: first connection: %w", t.name, err)
		}
		if s.on("rate") || rs[i].RSSStartKB == 0 {
			rs[i].RSSStartKB = treeRSS(t.pid)
		}
	}
	steps := []struct {
		phase string
		run   func([]target, []result) error
	}{
		{"rate", s.phaseRate},
		{"latency", s.phaseLatency},
		{"bulk", s.phaseBulk},
		{"tls", s.phaseTLS},
		{"idle", s.phaseIdle},
		{"slowloris", s.phaseSlowloris},
	}
	for _, st := range steps {
		if !s.on(st.phase) {
			continue
		}
		if err := st.run(ts, rs); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

func (s *suite) on(phase string) bool { return s.phases[phase] }

// loadMax runs one load on target i, records the proxy's peak RSS and adds
// the CPU time the proxy, backend and load generator used to cpu.
func (s *suite) loadMax(ts []target, rs []result, i int, cpu *[3]int64, f func() error) error {
	var r *rssSampler
	if ts[i].pid > 0 {
		r = sampleRSS(ts[i].pid)
	}
	p0, b0, c0 := int64(0), treeCPU(s.backendPID), treeCPU(0)
	if ts[i].pid > 0 {
		p0 = treeCPU(ts[i].pid)
	}
	err := f()
	if ts[i].pid > 0 {
		cpu[0] += treeCPU(ts[i].pid) - p0
		rs[i].RSSLoadKB = max(rs[i].RSSLoadKB, r.Stop())
	}
	if s.backendPID > 0 {
		cpu[1] += treeCPU(s.backendPID) - b0
	}
	cpu[2] += treeCPU(0) - c0
	return err
}

func (s *suite) phaseRate(ts []target, rs []result) error {
	// 1. New connections per second: ClientHello -> first byte back.
	per := s.rateTime / time.Duration(s.rounds)
	log.Printf("rate: %d rounds of %s per target, c=%d (load %s)", s.rounds, per, s.concurrency, loadavg())
	okN := make([]int64, len(ts))
	took := make([]time.Duration, len(ts))
	err := s.interleave(ts, func(i int) error {
		return s.loadMax(ts, rs, i, &rs[i].RateCPU, func() error {
			n, fails, d, firstErr := rate(ts[i].addr, s.hello, s.concurrency, per)
			okN[i] += n
			took[i] += d
			rs[i].ConnErrors += fails
			if firstErr != nil {
				log.Printf("%s: %d connection errors, first: %v", ts[i].name, fails, firstErr)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	for i := range ts {
		rs[i].ConnsPerS = float64(okN[i]) / took[i].Seconds()
		rs[i].RateN = okN[i]
	}

	return nil
}

func (s *suite) phaseLatency(ts []target, rs []result) error {
	// 2. Latency: sequential, one connection per target in turn.
	log.Printf("latency: %d sequential connections per target, interleaved (load %s)", s.latencyN, loadavg())
	lat := make([][]time.Duration, len(ts))
	for range s.latencyN {
		for i, t := range ts {
			d, err := firstByte(t.addr, s.hello, nil)
			if err != nil {
				return fmt.Errorf("%s: latency: %w", t.name, err)
			}
			lat[i] = append(lat[i], d)
		}
	}
	for i := range ts {
		rs[i].P50us, rs[i].P99us = percentiles(lat[i])
	}

	return nil
}

func (s *suite) phaseBulk(ts []target, rs []result) error {
	// 3. Raw bulk throughput, 1 and 8 streams.
	per := s.bulkTime / time.Duration(s.rounds)
	log.Printf("raw bulk: %d rounds of %s per target and stream count (load %s)", s.rounds, per, loadavg())
	for _, streams := range []int{1, 8} {
		bytesN := make([]int64, len(ts))
		took := make([]time.Duration, len(ts))
		err := s.interleave(ts, func(i int) error {
			cpu := &rs[i].Bulk1CPU
			if streams > 1 {
				cpu = &rs[i].Bulk8CPU
			}
			return s.loadMax(ts, rs, i, cpu, func() error {
				n, d, err := bulkRaw(ts[i].addr, s.hello, streams, per)
				bytesN[i] += n
				took[i] += d
				return err
			})
		})
		if err != nil {
			return err
		}
		for i := range ts {
			mbps := float64(bytesN[i]) / took[i].Seconds() / 1e6
			if streams == 1 {
				rs[i].Bulk1MBps, rs[i].Bulk1B = mbps, bytesN[i]
			} else {
				rs[i].Bulk8MBps, rs[i].Bulk8B = mbps, bytesN[i]
			}
		}
	}

	return nil
}

func (s *suite) phaseTLS(ts []target, rs []result) error {
	// 4. Optional TLS bulk: crypto on both ends, the proxies in between.
	if s.tlsCfg != nil && s.tlsBulkTime > 0 {
		per := s.tlsBulkTime / time.Duration(s.rounds)
		log.Printf("TLS bulk: %d rounds of %s per target and stream count (load %s)", s.rounds, per, loadavg())
		for _, streams := range []int{1, 8} {
			bytesN := make([]int64, len(ts))
			took := make([]time.Duration, len(ts))
			err := s.interleave(ts, func(i int) error {
				if ts[i].tls == "" {
					return nil
				}
				n, d, err := bulkTLS(ts[i].tls, s.tlsCfg, streams, per)
				bytesN[i] += n
				took[i] += d
				return err
			})
			if err != nil {
				return err
			}
			for i := range ts {
				if took[i] == 0 {
					continue
				}
				mbps := float64(bytesN[i]) / took[i].Seconds() / 1e6
				if streams == 1 {
					rs[i].TLSBulk1MBs = mbps
				} else {
					rs[i].TLSBulk8MBs = mbps
				}
			}
		}
	}

	return nil
}

func (s *suite) phaseIdle(ts []target, rs []result) error {
	// 5. Memory per idle established connection (one target at a time).
	for i, t := range ts {
		if t.pid <= 0 || s.idle <= 0 || strings.HasPrefix(t.name, "plain") { // io.Copy holds 6 descriptors per idle connection
			continue
		}
		log.Printf("%s: RSS with %d idle connections (load %s)", t.name, s.idle, loadavg())
		time.Sleep(time.Second)
		rs[i].RSSBaseKB = treeRSS(t.pid)
		kern0 := kernelTCPKB()
		conns, err := openIdle(t.addr, s.hello, s.idle)
		if err != nil {
			closeAll(conns)
			return fmt.Errorf("%s: %w", t.name, err)
		}
		time.Sleep(s.idleWait)
		rs[i].RSSIdleKB = treeRSS(t.pid)
		rs[i].IdleKernKB = kernelTCPKB() - kern0
		rs[i].IdleConns = len(conns)
		closeAll(conns)
		time.Sleep(2 * time.Second)
	}

	return nil
}

func (s *suite) phaseSlowloris(ts []target, rs []result) error {
	// 6. Slowloris: pending connections that never finish their hello;
	// what they cost and whether a legitimate connection still gets through.
	for i, t := range ts {
		if t.pid <= 0 || s.slow <= 0 || strings.HasPrefix(t.name, "plain") {
			continue
		}
		log.Printf("%s: slowloris with %d pending connections (load %s)", t.name, s.slow, loadavg())
		r, err := s.slowloris(t)
		if err != nil {
			return fmt.Errorf("%s: slowloris: %w", t.name, err)
		}
		rs[i].Slow = r
		time.Sleep(2 * time.Second)
	}
	return nil
}

func (s *suite) slowloris(t target) (*slowResult, error) {
	r := &slowResult{Target: s.slow, LegitN: s.slowLegitN}
	time.Sleep(time.Second)
	r.RSSBaseKB = treeRSS(t.pid)
	r.KernBaseKB = kernelTCPKB()
	// Half of the record header and the first bytes of the hello: the
	// proxy knows it is TLS and must wait for the rest.
	partial := s.hello[:min(len(s.hello), 100)]
	sl := startSlowloris(t.addr, partial, s.slow, s.slowPerIP)
	defer sl.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for sl.held.Load() < int64(s.slow)*95/100 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if sl.held.Load() == 0 {
		return nil, errors.New("no pending connection could be opened")
	}
	// Legitimate connections while the pending ones are held; RSS is
	// sampled throughout and its maximum reported.
	rss := sampleRSS(t.pid)
	var held, samples int64
	var lat []time.Duration
	legitDialer := &net.Dialer{Timeout: 5 * time.Second}
	for range s.slowLegitN {
		held += sl.held.Load()
		samples++
		d, err := firstByte(t.addr, s.hello, legitDialer)
		if err != nil {
			r.LegitFail++
			if r.LegitErr == "" {
				r.LegitErr = err.Error()
			}
			continue
		}
		lat = append(lat, d)
		time.Sleep(10 * time.Millisecond)
	}
	r.KernKB = kernelTCPKB()
	r.RSSKB = rss.Stop()
	r.Held = held / samples
	r.Reopened = sl.reopened.Load()
	r.DialFails = sl.dialFails.Load()
	r.LegitP50us, r.LegitP99us = percentiles(lat)
	return r, nil
}
