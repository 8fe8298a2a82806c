package natlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func (l *Lab) probeArgs(cmd string, tm ProbeTiming) ([]string, error) {
	primary, _, ok := l.ProbeServer()
	if !ok {
		return nil, fmt.Errorf("natlab: lab %s has no probe server", l.Name)
	}
	args := []string{cmd, "-server", primary.String()}
	if tm.Wait > 0 {
		args = append(args, "-wait", tm.Wait.String())
	}
	if tm.Tries > 0 {
		args = append(args, "-tries", strconv.Itoa(tm.Tries))
	}
	return args, nil
}

func decodeLastJSON(out string, v any) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), v); err != nil {
		return fmt.Errorf("natlab: agent output %q: %w", out, err)
	}
	return nil
}

// Classify runs the classify agent on host against the lab's probe server.
func (l *Lab) Classify(ctx context.Context, host string, tm ProbeTiming) (ClassifyResult, error) {
	var r ClassifyResult
	args, err := l.probeArgs("classify", tm)
	if err != nil {
		return r, err
	}
	_, alt, _ := l.ProbeServer()
	out, err := l.RunAgent(ctx, host, append(args, "-alt", alt.String())...)
	if err != nil {
		return r, err
	}
	return r, decodeLastJSON(out, &r)
}

// ClassifyHosts classifies several hosts concurrently (independent processes
// and sockets; hosts behind the same NAT use distinct ports).
func (l *Lab) ClassifyHosts(ctx context.Context, hosts []string, tm ProbeTiming) ([]ClassifyResult, error) {
	res := make([]ClassifyResult, len(hosts))
	err := parallel(ctx, len(hosts), 6, func(ctx context.Context, i int) error {
		r, err := l.Classify(ctx, hosts[i], tm)
		if err != nil {
			return fmt.Errorf("classify %s: %w", hosts[i], err)
		}
		res[i] = r
		return nil
	})
	return res, err
}

// QueryOptions tune Lab.Query.
type QueryOptions struct {
	Flags Flags
	// Delay asks the server to hold its reply (mapping timeout tests).
	Delay time.Duration
	// LocalPort binds the client socket to a fixed port (0: ephemeral).
	LocalPort uint16
	// Server is the probe endpoint to ask (default: the primary endpoint).
	Server netip.AddrPort
	Timing ProbeTiming
}

// Query sends one probe request from host. ok is false when no reply came.
func (l *Lab) Query(ctx context.Context, host string, o QueryOptions) (r Reply, ok bool, err error) {
	args, err := l.probeArgs("query", o.Timing)
	if err != nil {
		return Reply{}, false, err
	}
	if o.Server.IsValid() {
		args[2] = o.Server.String()
	}
	if o.Flags&FlagChangeIP != 0 {
		args = append(args, "-change-ip")
	}
	if o.Flags&FlagChangePort != 0 {
		args = append(args, "-change-port")
	}
	if o.Delay > 0 {
		args = append(args, "-delay", o.Delay.String())
	}
	if o.LocalPort != 0 {
		args = append(args, "-port", strconv.Itoa(int(o.LocalPort)))
	}
	out, err := l.RunAgent(ctx, host, args...)
	if err != nil {
		return Reply{}, false, err
	}
	var res struct {
		OK bool `json:"ok"`
		Reply
	}
	if err := decodeLastJSON(out, &res); err != nil {
		return Reply{}, false, err
	}
	return res.Reply, res.OK, nil
}

// MeasureLoss sends count probe requests from host and counts the replies.
func (l *Lab) MeasureLoss(ctx context.Context, host string, count int, interval time.Duration) (LossResult, error) {
	var r LossResult
	args, err := l.probeArgs("loss", ProbeTiming{})
	if err != nil {
		return r, err
	}
	out, err := l.RunAgent(ctx, host, append(args, "-count", strconv.Itoa(count), "-interval", interval.String())...)
	if err != nil {
		return r, err
	}
	return r, decodeLastJSON(out, &r)
}

// MeasureUpload uploads n bytes over TCP from host to the probe server.
func (l *Lab) MeasureUpload(ctx context.Context, host string, n int64) (BandwidthResult, error) {
	var r BandwidthResult
	args, err := l.probeArgs("upload", ProbeTiming{})
	if err != nil {
		return r, err
	}
	out, err := l.RunAgent(ctx, host, append(args, "-bytes", strconv.FormatInt(n, 10))...)
	if err != nil {
		return r, err
	}
	return r, decodeLastJSON(out, &r)
}

// Punch runs simultaneous-send UDP hole punching between hosts a and b: each
// learns its mapped address from the probe server, the lab hands each the
// other's mapped address (the rendezvous), and both punch at once. The pair is
// punched when both sides had their punches acknowledged.
func (l *Lab) Punch(ctx context.Context, a, b string, timeout time.Duration) (PunchResult, PunchResult, error) {
	args, err := l.probeArgs("punch", ProbeTiming{})
	if err != nil {
		return PunchResult{}, PunchResult{}, err
	}
	args = append(args, "-timeout", timeout.String())
	var procs [2]*Proc
	var mapped [2]string
	for i, h := range []string{a, b} {
		p, err := l.StartAgent(ctx, h, args, StartOptions{})
		if err != nil {
			return PunchResult{}, PunchResult{}, err
		}
		defer p.Stop(time.Second)
		procs[i] = p
	}
	for i, p := range procs {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		line, err := p.NextLine(wctx)
		cancel()
		m, ok := strings.CutPrefix(line, "mapped ")
		if err != nil || !ok {
			_ = p.Wait(ctx)
			return PunchResult{}, PunchResult{}, fmt.Errorf("punch agent on %s: no mapped address (%v): %s", p.Host, err, p.Stderr())
		}
		mapped[i] = m
	}
	if err := procs[0].WriteLine("peer " + mapped[1]); err != nil {
		return PunchResult{}, PunchResult{}, err
	}
	if err := procs[1].WriteLine("peer " + mapped[0]); err != nil {
		return PunchResult{}, PunchResult{}, err
	}
	var res [2]PunchResult
	for i, p := range procs {
		if err := p.Wait(ctx); err != nil {
			return res[0], res[1], &ExitError{Host: p.Host, Argv: args, Err: err, Stderr: p.Stderr()}
		}
		if err := decodeLastJSON(p.Stdout(), &res[i]); err != nil {
			return res[0], res[1], err
		}
	}
	return res[0], res[1], nil
}

// startPortMapper runs miniupnpd (UPnP IGD + NAT-PMP/PCP) on router n,
// listening on its LAN bridge and mapping on its WAN. Its own nftables table
// ("miniupnpd") keeps its rules apart from the NAT profile's table.
//
// miniupnpd refuses to forward ports when its WAN address is reserved, and the
// lab's documentation prefixes are (RFC 5737), as are the LAN prefixes of an
// upstream NAT. Declaring the address (ext_ip=) is refused for reserved
// addresses too. What it does accept is a STUN test (ext_perform_stun): the
// address the STUN server reports becomes the external address, and port
// forwarding is enabled when the test finds no NAT or filtering in front of
// the router (all four CHANGE-REQUEST variants answered, ports preserved).
// The lab's probe server answers that test; a router directly on the
// internet segment always passes it, so Up fails if it does not.
func (l *Lab) startPortMapper(ctx context.Context, n Node, detach bool) error {
	dir := filepath.Join(l.stateDir, l.ID+"-"+n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stunServer, _, ok := l.ProbeServer()
	if !ok {
		return fmt.Errorf("natlab: %s has the upnp option but lab %s has no probe server (miniupnpd's STUN test needs it)", n.Name, l.Name)
	}
	conf := fmt.Sprintf(`ext_ifname=wan0
listening_ip=lan0
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
notify_interval=60
lease_file=%s/leases
uuid=%s
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
ext_perform_stun=yes
ext_stun_host=%s
ext_stun_port=%d
allow 1024-65535 %s 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, dir, uuidFor(l.ID, n.Name), stunServer.Addr(), stunServer.Port(), n.LAN.Masked())
	if err := os.WriteFile(filepath.Join(dir, "miniupnpd.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	// miniupnpd's nftables backend expects its table and chains to exist.
	tables := `table inet miniupnpd {
	chain forward { type filter hook forward priority 10; policy accept; jump miniupnpd; }
	chain miniupnpd { }
	chain prerouting { type nat hook prerouting priority -110; policy accept; jump prerouting_miniupnpd; }
	chain postrouting { type nat hook postrouting priority 110; policy accept; jump postrouting_miniupnpd; }
	chain prerouting_miniupnpd { }
	chain postrouting_miniupnpd { }
}
`
	if _, err := runCmd(ctx, []byte(tables), ipPath(), "netns", "exec", l.NS(n.Name), nftPath(), "-f", "-"); err != nil {
		return fmt.Errorf("miniupnpd tables on %s: %w", n.Name, err)
	}
	p, err := l.Start(ctx, n.Name, []string{toolOr("miniupnpd"), "-d", "-f", filepath.Join(dir, "miniupnpd.conf"),
		"-P", filepath.Join(dir, "miniupnpd.pid")}, StartOptions{Detach: detach})
	if err != nil {
		return err
	}
	// Ready when it logs that NAT-PMP is listening.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		select {
		case <-p.Done():
			return fmt.Errorf("miniupnpd on %s exited: %s", n.Name, p.Stderr())
		case <-wctx.Done():
			return fmt.Errorf("miniupnpd on %s not ready: %s", n.Name, p.Stderr())
		case <-time.After(20 * time.Millisecond): // poll its log
		}
		log := p.Stderr()
		if !strings.Contains(log, "Listening for NAT-PMP") {
			continue
		}
		// The STUN verdict is logged before the listeners open.
		if n.Parent == InternetNode && !strings.Contains(log, "Port forwarding is now enabled") {
			return fmt.Errorf("miniupnpd on %s did not enable port forwarding after its STUN test: %s", n.Name, log)
		}
		return nil
	}
}

// PortMapperLog returns miniupnpd's output on router (for diagnostics).
func (l *Lab) PortMapperLog(router string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.procs {
		if p.Host == router && len(p.Argv) > 0 && strings.HasSuffix(p.Argv[0], "miniupnpd") {
			return p.Stderr(), nil
		}
	}
	return "", errors.New("natlab: no miniupnpd on " + router)
}

func uuidFor(id, node string) string {
	h := fmt.Sprintf("%x", []byte(id+node+"0000000000000000"))[:32]
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// MappedOf is a convenience for tests: the address a host is seen from by the
// probe server.
func (l *Lab) MappedOf(ctx context.Context, host string) (netip.AddrPort, error) {
	r, ok, err := l.Query(ctx, host, QueryOptions{})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if !ok {
		return netip.AddrPort{}, ErrNoReply
	}
	return r.Observed, nil
}
