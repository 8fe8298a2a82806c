package natlab

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/elacity/pc2/transport/punch"
)

// MaxBirthdayProbes is the easy side's probe budget (punch.MaxProbes).
const MaxBirthdayProbes = punch.MaxProbes

// MatrixProfiles are the NAT profiles of the punch matrix: the four built-in
// profiles and "dbl", a port-restricted home NAT behind a port-restricted
// carrier-grade NAT (double NAT).
var MatrixProfiles = []string{"fc", "arc", "prc", "sym", "dbl"}

// Paths a matrix trial can end on.
const (
	PathDirect   = "direct"
	PathBirthday = "birthday"
	PathRelay    = "relay"
	PathNone     = "none"
)

// MatrixConfig describes a matrix run.
type MatrixConfig struct {
	Profiles   []string // aliases from MatrixProfiles
	Transports []string // "udp", "tcp"
	Losses     []Loss   // Loss{} is no loss; applied on the initiator's NAT, both directions
	Trials     int      // per cell
	Parallel   int      // concurrent trials
	// Latency is the emulated one-way latency each peer adds to what it
	// sends (the kernel has no netem): the direct RTT is twice it.
	Latency time.Duration
	// Relay falls back to PC2's relay (relay/circuit) on the rendezvous host
	// when a trial finds no direct path.
	Relay    bool
	Seed     uint64
	Launcher Launcher
	Log      io.Writer
}

// MatrixTrial is one trial of one cell.
type MatrixTrial struct {
	Loss, Transport, A, B string
	Trial                 int
	HostA, HostB          string
	Expect                string  // the theory's path: direct, birthday or relay
	Direct                bool    // both sides confirmed a direct (or birthday) path
	Path                  string  // direct, birthday, relay or none
	Connected             bool    // direct or through the relay
	Sent, Probes, Sockets int     // both sides together (sockets: the larger side)
	Dials                 int     // TCP connects, both sides
	RTTMillis             float64 // signalling RTT measured by the attempt
	FirstMillis           float64 // initiator: Sync → first authenticated direct packet
	FirstRTT              float64 // FirstMillis / RTTMillis
	TotalMillis           float64
	Err                   string
}

// MatrixCell summarises the trials of one (loss, transport, A, B).
type MatrixCell struct {
	Loss, Transport, A, B, Expect string
	Trials, Direct, Connected     int
	Paths                         map[string]int
	FirstRTTp50, FirstRTTp99      float64 // over direct trials
	FirstMsP50, RTTMsP50          float64
	ProbesP50, ProbesMax          int // birthday trials
	SentMean                      float64
}

// DirectRate is the share of trials with a direct path.
func (c MatrixCell) DirectRate() float64 { return ratio(c.Direct, c.Trials) }

// ConnectedRate is the share of trials connected directly or by relay.
func (c MatrixCell) ConnectedRate() float64 { return ratio(c.Connected, c.Trials) }

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// MatrixReport is the outcome of RunMatrix.
type MatrixReport struct {
	Config  MatrixConfig
	Trials  []MatrixTrial
	Cells   []MatrixCell
	Elapsed time.Duration
}

// matrixNAT returns whether a matrix profile's mapping is destination
// dependent (hard) and its filtering address-and-port dependent (strict).
func matrixNAT(alias string) (hard, strict bool, err error) {
	if alias == "dbl" {
		return false, true, nil
	}
	p, err := ProfileByName(alias)
	if err != nil {
		return false, false, err
	}
	return p.Mapping != EIM, p.Filtering == APDF, nil
}

// ExpectedPath is the theory of nat-dht.md §A1 for an ordered pair: direct
// unless one side is hard and the other strict (birthday over UDP, relay over
// TCP) or both are hard (relay).
func ExpectedPath(a, b, transport string) (string, error) {
	ha, sa, err := matrixNAT(a)
	if err != nil {
		return "", err
	}
	hb, sb, err := matrixNAT(b)
	if err != nil {
		return "", err
	}
	switch {
	case ha && hb:
		return PathRelay, nil
	case ha && sb, hb && sa:
		if transport == "udp" {
			return PathBirthday, nil
		}
		return PathRelay, nil
	}
	return PathDirect, nil
}

// PunchMatrixTopology has, for every profile, an "a" side (initiators) and a
// "b" side (responders), each with hosts private hosts, a probe server and a
// rendezvous host. Loss is set on the a-side NATs only (the inner NAT of a
// double NAT), so every peer-to-peer path loses that share in each direction.
func PunchMatrixTopology(profiles []string, hosts int, loss Loss) (Topology, error) {
	t := Topology{Name: "pmatrix", Public: []PublicHost{{Name: "probe", ProbeServer: true}, {Name: "rdv"}}}
	for _, alias := range profiles {
		for _, side := range []string{"a", "b"} {
			name := alias + "-" + side
			var hs []string
			for i := 1; i <= hosts; i++ {
				hs = append(hs, fmt.Sprintf("%s%d", name, i))
			}
			var l Loss
			if side == "a" {
				l = loss
			}
			if alias == "dbl" {
				t.NATs = append(t.NATs,
					NAT{Name: name + "-isp", Options: NATOptions{Profile: PortRestricted}, CGNAT: true},
					NAT{Name: name, Options: NATOptions{Profile: PortRestricted, Loss: l}, Upstream: name + "-isp", Hosts: hs})
				continue
			}
			p, err := ProfileByName(alias)
			if err != nil {
				return Topology{}, err
			}
			t.NATs = append(t.NATs, NAT{Name: name, Options: NATOptions{Profile: p, Loss: l}, Hosts: hs})
		}
	}
	return t, nil
}

func (c *MatrixConfig) normalize() error {
	if len(c.Profiles) == 0 {
		c.Profiles = MatrixProfiles
	}
	for _, p := range c.Profiles {
		if _, _, err := matrixNAT(p); err != nil {
			return fmt.Errorf("matrix: %w", err)
		}
	}
	if len(c.Transports) == 0 {
		c.Transports = []string{"udp", "tcp"}
	}
	for _, t := range c.Transports {
		if t != "udp" && t != "tcp" {
			return fmt.Errorf("matrix: transport %q (want udp, tcp)", t)
		}
	}
	if len(c.Losses) == 0 {
		c.Losses = []Loss{{}}
	}
	if c.Trials <= 0 {
		c.Trials = 100
	}
	if c.Parallel <= 0 {
		c.Parallel = 6
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// RunMatrix builds one lab per loss level and runs every trial of every
// cell, at most Parallel at once, each host in one trial at a time.
func RunMatrix(ctx context.Context, cfg MatrixConfig) (*MatrixReport, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	rep := &MatrixReport{Config: cfg}
	// Hosts per NAT: enough for Parallel trials spread over the profiles.
	hosts := min(max(cfg.Parallel/len(cfg.Profiles)+1, 2), 8)
	for _, loss := range cfg.Losses {
		trials, err := runMatrixLab(ctx, cfg, loss, hosts)
		rep.Trials = append(rep.Trials, trials...)
		if err != nil {
			return rep, err
		}
	}
	rep.Cells = summarize(cfg, rep.Trials)
	rep.Elapsed = time.Since(t0)
	return rep, nil
}

type matrixJob struct {
	loss            Loss
	transport, a, b string
	trial           int
}

func runMatrixLab(ctx context.Context, cfg MatrixConfig, loss Loss, hosts int) ([]MatrixTrial, error) {
	topo, err := PunchMatrixTopology(cfg.Profiles, hosts, loss)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	l, err := Up(ctx, topo, Config{Name: "matrix", Launcher: cfg.Launcher})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	rdvNode, _ := l.Node("rdv")
	rdvAddr := rdvNode.Addrs[0]
	rdv, err := l.StartAgent(ctx, "rdv", []string{"rendezvous", "-addr", rdvAddr.String()}, StartOptions{})
	if err != nil {
		return nil, err
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	line, err := rdv.NextLine(rctx)
	rcancel()
	relayID, ok := strings.CutPrefix(line, "ready relay-id=")
	if err != nil || !ok {
		return nil, fmt.Errorf("rendezvous not ready (%q, %v): %s", line, err, rdv.Stderr())
	}
	primary, alt, _ := l.ProbeServer()
	// One long-running peer agent per private host.
	names := l.Hosts(KindPrivate)
	agents := make(map[string]*Proc, len(names))
	var amu sync.Mutex
	err = parallel(ctx, len(names), 8, func(ctx context.Context, i int) error {
		h := names[i]
		p, err := l.StartAgent(ctx, h, []string{"peer", "-server", primary.String(), "-alt", alt.String(),
			"-rdv", rdvAddr.String(), "-relay-id", relayID, "-name", h, "-latency", cfg.Latency.String()}, StartOptions{})
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		line, err := p.NextLine(wctx)
		cancel()
		if err != nil || !strings.HasPrefix(line, "ready ") {
			return fmt.Errorf("peer agent on %s not ready (%q, %v): %s", h, line, err, p.Stderr())
		}
		// The lab checks itself: a symmetric host must see a hard mapping.
		alias, _, _ := strings.Cut(h, "-")
		wantHard, _, _ := matrixNAT(alias)
		if got := line == "ready hard=true"; got != wantHard {
			return fmt.Errorf("peer %s: hard mapping %v, profile %s says %v", h, got, alias, wantHard)
		}
		amu.Lock()
		agents[h] = p
		amu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Log, "matrix: lab (loss %s) up with %d peers in %v\n", loss, len(names), time.Since(t0).Round(time.Millisecond))

	// Long trials (birthday probing, relay after a failed direct attempt)
	// first, short ones after: the dispatcher starts the first job whose
	// hosts are free, so short trials fill the gaps and the run does not end
	// with a tail of long trials queued on a few hosts.
	var jobs, short []matrixJob
	for i := range cfg.Trials {
		for _, tr := range cfg.Transports {
			for _, a := range cfg.Profiles {
				for _, b := range cfg.Profiles {
					j := matrixJob{loss: loss, transport: tr, a: a, b: b, trial: i}
					if exp, _ := ExpectedPath(a, b, tr); exp == PathDirect {
						short = append(short, j)
					} else {
						jobs = append(jobs, j)
					}
				}
			}
		}
	}
	jobs = append(jobs, short...)
	free := map[string]bool{}
	for _, h := range names {
		free[h] = true
	}
	freeHost := func(nat string) string {
		for i := 1; i <= hosts; i++ {
			h := fmt.Sprintf("%s%d", nat, i)
			if free[h] {
				return h
			}
		}
		return ""
	}
	var (
		mu       sync.Mutex
		cond     = sync.NewCond(&mu)
		running  int
		out      []MatrixTrial
		firstErr error
		wg       sync.WaitGroup
		seq      int
		lastLog  = time.Now()
	)
	for len(jobs) > 0 {
		mu.Lock()
		var ha, hb string
		idx := -1
		for firstErr == nil && ctx.Err() == nil {
			if running < cfg.Parallel {
				for i, j := range jobs {
					ha, hb = freeHost(j.a+"-a"), freeHost(j.b+"-b")
					if ha != "" && hb != "" {
						idx = i
						break
					}
				}
			}
			if idx >= 0 {
				break
			}
			cond.Wait()
		}
		if idx < 0 {
			mu.Unlock()
			break
		}
		j := jobs[idx]
		jobs = slices.Delete(jobs, idx, idx+1)
		free[ha], free[hb] = false, false
		running++
		seq++
		id := fmt.Sprintf("t%d", seq)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, err := runMatrixTrial(ctx, cfg, j, id, agents[ha], agents[hb], ha, hb)
			mu.Lock()
			defer mu.Unlock()
			free[ha], free[hb] = true, true
			running--
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil {
				out = append(out, rec)
			}
			if time.Since(lastLog) > 10*time.Second {
				lastLog = time.Now()
				fmt.Fprintf(cfg.Log, "matrix: loss %s: %d trials done, %d left\n", loss, len(out), len(jobs)+running)
			}
			cond.Broadcast()
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	fmt.Fprintf(cfg.Log, "matrix: loss %s: %d trials in %v\n", loss, len(out), time.Since(t0).Round(time.Millisecond))
	return out, firstErr
}

func runMatrixTrial(ctx context.Context, cfg MatrixConfig, j matrixJob, id string, pa, pb *Proc, ha, hb string) (MatrixTrial, error) {
	rec := MatrixTrial{Loss: j.loss.String(), Transport: j.transport, A: j.a, B: j.b, Trial: j.trial, HostA: ha, HostB: hb}
	rec.Expect, _ = ExpectedPath(j.a, j.b, j.transport)
	seed := cfg.Seed ^ uint64(len(id))<<56 ^ uint64(j.trial)
	sides := [2]TrialSide{}
	for _, x := range []struct {
		p   *Proc
		cmd TrialCmd
	}{
		{pa, TrialCmd{ID: id, Peer: hb, Initiator: true, Transport: j.transport, Relay: cfg.Relay, Seed: seed}},
		{pb, TrialCmd{ID: id, Peer: ha, Transport: j.transport, Relay: cfg.Relay, Seed: seed + 1}},
	} {
		b, _ := json.Marshal(x.cmd)
		if err := x.p.WriteLine(string(b)); err != nil {
			return rec, fmt.Errorf("trial %s on %s: %w", id, x.p.Host, err)
		}
	}
	for i, p := range []*Proc{pa, pb} {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		line, err := p.NextLine(wctx)
		cancel()
		if err != nil {
			return rec, fmt.Errorf("trial %s on %s: no result (%v): %s", id, p.Host, err, tail(p.Stderr(), 2000))
		}
		if err := json.Unmarshal([]byte(line), &sides[i]); err != nil || sides[i].ID != id {
			return rec, fmt.Errorf("trial %s on %s: bad result %q: %v", id, p.Host, line, err)
		}
	}
	a, b := sides[0], sides[1]
	rec.Direct = a.OK && b.OK
	switch {
	case rec.Direct && (a.Path == PathBirthday || b.Path == PathBirthday):
		rec.Path = PathBirthday
	case rec.Direct:
		rec.Path = PathDirect
	case a.Relay && b.Relay:
		rec.Path = PathRelay
	default:
		rec.Path = PathNone
	}
	rec.Connected = rec.Path != PathNone
	rec.Sent, rec.Probes, rec.Sockets, rec.Dials = a.Sent+b.Sent, a.Probes+b.Probes, max(a.Sockets, b.Sockets), a.Dials+b.Dials
	rec.RTTMillis = float64(a.RTTMicros) / 1000
	if rec.Direct {
		rec.FirstMillis = float64(a.FirstMicros) / 1000
		if a.RTTMicros > 0 {
			rec.FirstRTT = float64(a.FirstMicros) / float64(a.RTTMicros)
		}
	}
	rec.TotalMillis = float64(max(a.TotalMicros, b.TotalMicros)) / 1000
	var errs []string
	for i, s := range sides {
		if s.Err != "" {
			errs = append(errs, s.Err)
		}
		if s.Detail != "" && !rec.Direct {
			errs = append(errs, []string{"A: ", "B: "}[i]+s.Detail)
		}
	}
	rec.Err = strings.Join(errs, "; ")
	return rec, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func summarize(cfg MatrixConfig, trials []MatrixTrial) []MatrixCell {
	type key struct{ loss, tr, a, b string }
	by := map[key][]MatrixTrial{}
	for _, t := range trials {
		k := key{t.Loss, t.Transport, t.A, t.B}
		by[k] = append(by[k], t)
	}
	var cells []MatrixCell
	for _, loss := range cfg.Losses {
		for _, tr := range cfg.Transports {
			for _, a := range cfg.Profiles {
				for _, b := range cfg.Profiles {
					ts := by[key{loss.String(), tr, a, b}]
					c := MatrixCell{Loss: loss.String(), Transport: tr, A: a, B: b, Trials: len(ts), Paths: map[string]int{}}
					c.Expect, _ = ExpectedPath(a, b, tr)
					var first, firstMs, rtt, probes []float64
					sent := 0
					for _, t := range ts {
						c.Paths[t.Path]++
						sent += t.Sent
						rtt = append(rtt, t.RTTMillis)
						if t.Direct {
							c.Direct++
							first = append(first, t.FirstRTT)
							firstMs = append(firstMs, t.FirstMillis)
						}
						if t.Connected {
							c.Connected++
						}
						if t.Path == PathBirthday {
							probes = append(probes, float64(t.Probes))
							c.ProbesMax = max(c.ProbesMax, t.Probes)
						}
					}
					c.FirstRTTp50, c.FirstRTTp99 = percentile(first, 0.5), percentile(first, 0.99)
					c.FirstMsP50, c.RTTMsP50 = percentile(firstMs, 0.5), percentile(rtt, 0.5)
					if len(probes) > 0 {
						c.ProbesP50 = int(percentile(probes, 0.5))
					}
					c.SentMean = ratio(sent, len(ts))
					cells = append(cells, c)
				}
			}
		}
	}
	return cells
}

func fmtF(x float64, prec int) string {
	if math.IsNaN(x) {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', prec, 64)
}

func pathsString(m map[string]int) string {
	var parts []string
	for _, p := range []string{PathDirect, PathBirthday, PathRelay, PathNone} {
		if m[p] > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", p, m[p]))
		}
	}
	return strings.Join(parts, " ")
}

// Goals are the figures the matrix is judged by (nat-dht.md §C1).
type Goals struct {
	PunchableDirect map[string][2]int // loss → (direct, trials) on pairs the theory calls direct, UDP
	TCPDirect       map[string][2]int // same, TCP
	Birthday        map[string][2]int // loss → UDP birthday cells
	BirthdayProbes  []float64
	RelayConnected  map[string][2]int // loss → relay-only cells connected
	FirstRTT        map[string][]float64
	Unexpected      []string // cells whose outcome contradicts the theory
}

// Goals computes the headline figures.
func (r *MatrixReport) Goals() Goals {
	g := Goals{PunchableDirect: map[string][2]int{}, TCPDirect: map[string][2]int{}, Birthday: map[string][2]int{},
		RelayConnected: map[string][2]int{}, FirstRTT: map[string][]float64{}}
	add := func(m map[string][2]int, k string, ok bool) {
		v := m[k]
		v[1]++
		if ok {
			v[0]++
		}
		m[k] = v
	}
	for _, t := range r.Trials {
		switch {
		case t.Expect == PathDirect && t.Transport == "udp":
			add(g.PunchableDirect, t.Loss, t.Direct)
		case t.Expect == PathDirect && t.Transport == "tcp":
			add(g.TCPDirect, t.Loss, t.Direct)
		case t.Expect == PathBirthday:
			add(g.Birthday, t.Loss, t.Direct)
			if t.Direct {
				g.BirthdayProbes = append(g.BirthdayProbes, float64(t.Probes))
			}
		case t.Expect == PathRelay:
			add(g.RelayConnected, t.Loss+"/"+t.Transport, t.Connected)
		}
		if t.Direct && t.Path == PathDirect {
			g.FirstRTT[t.Loss+"/"+t.Transport] = append(g.FirstRTT[t.Loss+"/"+t.Transport], t.FirstRTT)
		}
	}
	for _, c := range r.Cells {
		switch c.Expect {
		case PathDirect, PathBirthday:
			if c.Direct == 0 && c.Trials > 0 {
				g.Unexpected = append(g.Unexpected, fmt.Sprintf("%s %s %s→%s: expected %s, no direct path in %d trials", c.Loss, c.Transport, c.A, c.B, c.Expect, c.Trials))
			}
		case PathRelay:
			if c.Direct > 0 {
				g.Unexpected = append(g.Unexpected, fmt.Sprintf("%s %s %s→%s: theory says relay, %d direct", c.Loss, c.Transport, c.A, c.B, c.Direct))
			}
		}
	}
	return g
}

// WriteTable prints one line per cell and the headline figures.
func (r *MatrixReport) WriteTable(w io.Writer) {
	cfg := r.Config
	fmt.Fprintf(w, "punch matrix: %d trials per cell, profiles %s, transports %s, one-way latency %v (direct RTT %v), relay fallback %v, %v\n",
		cfg.Trials, strings.Join(cfg.Profiles, ","), strings.Join(cfg.Transports, ","), cfg.Latency, 2*cfg.Latency, cfg.Relay, r.Elapsed.Round(time.Second))
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "LOSS\tPROTO\tA→B\tTHEORY\tN\tDIRECT\tCONNECTED\tPATHS\tFIRST p50/p99 (RTT)\tFIRST p50 ms\tRTT p50 ms\tPROBES p50/max\tPKTS/TRIAL\n")
	for _, c := range r.Cells {
		probes := "-"
		if c.ProbesMax > 0 {
			probes = fmt.Sprintf("%d/%d", c.ProbesP50, c.ProbesMax)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s→%s\t%s\t%d\t%s%%\t%s%%\t%s\t%s/%s\t%s\t%s\t%s\t%s\n",
			c.Loss, c.Transport, c.A, c.B, c.Expect, c.Trials, fmtF(100*c.DirectRate(), 1), fmtF(100*c.ConnectedRate(), 1),
			pathsString(c.Paths), fmtF(c.FirstRTTp50, 2), fmtF(c.FirstRTTp99, 2), fmtF(c.FirstMsP50, 1), fmtF(c.RTTMsP50, 1), probes, fmtF(c.SentMean, 1))
	}
	tw.Flush()
	g := r.Goals()
	fmt.Fprintln(w)
	for _, loss := range cfg.Losses {
		l := loss.String()
		pct := func(v [2]int) string {
			return fmt.Sprintf("%d/%d = %s%%", v[0], v[1], fmtF(100*ratio(v[0], v[1]), 2))
		}
		fmt.Fprintf(w, "loss %s: UDP direct on punchable pairs %s; TCP direct on punchable pairs %s; UDP birthday cells %s\n",
			l, pct(g.PunchableDirect[l]), pct(g.TCPDirect[l]), pct(g.Birthday[l]))
		for _, tr := range cfg.Transports {
			if v, ok := g.RelayConnected[l+"/"+tr]; ok {
				fmt.Fprintf(w, "loss %s: %s relay-only cells connected %s\n", l, strings.ToUpper(tr), pct(v))
			}
			if f := g.FirstRTT[l+"/"+tr]; len(f) > 0 {
				fmt.Fprintf(w, "loss %s: %s time to first direct packet: median %s RTT, p99 %s RTT (%d trials)\n",
					l, strings.ToUpper(tr), fmtF(percentile(f, 0.5), 2), fmtF(percentile(f, 0.99), 2), len(f))
			}
		}
	}
	if len(g.BirthdayProbes) > 0 {
		fmt.Fprintf(w, "birthday probes to success: median %s, p99 %s, max %s (%d trials)\n",
			fmtF(percentile(g.BirthdayProbes, 0.5), 0), fmtF(percentile(g.BirthdayProbes, 0.99), 0), fmtF(percentile(g.BirthdayProbes, 1), 0), len(g.BirthdayProbes))
	}
	for _, u := range g.Unexpected {
		fmt.Fprintf(w, "UNEXPECTED: %s\n", u)
	}
}

// WriteTrialsCSV writes one row per trial.
func (r *MatrixReport) WriteTrialsCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"loss", "transport", "a", "b", "trial", "host_a", "host_b", "expect", "direct", "path", "connected",
		"sent", "probes", "sockets", "dials", "rtt_ms", "first_ms", "first_rtt", "total_ms", "error"})
	for _, t := range r.Trials {
		_ = cw.Write([]string{t.Loss, t.Transport, t.A, t.B, strconv.Itoa(t.Trial), t.HostA, t.HostB, t.Expect,
			strconv.FormatBool(t.Direct), t.Path, strconv.FormatBool(t.Connected), strconv.Itoa(t.Sent), strconv.Itoa(t.Probes),
			strconv.Itoa(t.Sockets), strconv.Itoa(t.Dials), fmtF(t.RTTMillis, 3), fmtF(t.FirstMillis, 3), fmtF(t.FirstRTT, 3),
			fmtF(t.TotalMillis, 1), t.Err})
	}
	cw.Flush()
	return cw.Error()
}

// WriteCellsCSV writes one row per cell.
func (r *MatrixReport) WriteCellsCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"loss", "transport", "a", "b", "expect", "trials", "direct", "connected", "direct_rate", "connected_rate",
		"paths", "first_rtt_p50", "first_rtt_p99", "first_ms_p50", "rtt_ms_p50", "probes_p50", "probes_max", "packets_mean"})
	for _, c := range r.Cells {
		_ = cw.Write([]string{c.Loss, c.Transport, c.A, c.B, c.Expect, strconv.Itoa(c.Trials), strconv.Itoa(c.Direct), strconv.Itoa(c.Connected),
			fmtF(c.DirectRate(), 4), fmtF(c.ConnectedRate(), 4), pathsString(c.Paths), fmtF(c.FirstRTTp50, 3), fmtF(c.FirstRTTp99, 3),
			fmtF(c.FirstMsP50, 2), fmtF(c.RTTMsP50, 2), strconv.Itoa(c.ProbesP50), strconv.Itoa(c.ProbesMax), fmtF(c.SentMean, 1)})
	}
	cw.Flush()
	return cw.Error()
}

var errNoCells = errors.New("matrix: no cells to draw")
