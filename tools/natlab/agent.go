package natlab

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
)

// AgentCommands lists the agent subcommands with a one-line description.
func AgentCommands() [][2]string {
	return [][2]string{
		{"probe-server", "answer probe requests on two addresses × two ports (+ TCP sink)"},
		{"classify", "run mapping/filtering/hairpin probes against a probe server; print JSON"},
		{"punch", "UDP hole punch: print 'mapped ADDR', read 'peer ADDR' on stdin, print JSON"},
		{"query", "one probe request (optionally change-IP/port, delayed reply); print JSON"},
		{"loss", "send N probe requests, count replies; print JSON"},
		{"upload", "TCP upload to the probe server sink; print JSON with kbit/s"},
		{"rendezvous", "signalling server, TCP reflector and PC2 relay (relay/circuit) for matrix peers"},
		{"peer", "matrix peer: run punch trials read from stdin as JSON, print JSON results"},
	}
}

// AgentMain runs one agent subcommand; it is what lab processes execute inside
// namespaces (through the CLI's hidden `agent` subcommand, or a test binary's
// TestMain). SIGTERM and SIGINT end it cleanly.
func AgentMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if len(args) == 0 {
		return errors.New("natlab agent: missing subcommand")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("agent "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "", "probe server primary endpoint ip:port")
	var tm ProbeTiming
	fs.DurationVar(&tm.Wait, "wait", DefaultTiming.Wait, "wait per try for an answer")
	fs.IntVar(&tm.Tries, "tries", DefaultTiming.Tries, "tries before declaring no answer")
	enc := json.NewEncoder(stdout)
	parseServer := func() (netip.AddrPort, error) {
		ap, err := netip.ParseAddrPort(*server)
		if err != nil {
			return ap, fmt.Errorf("agent %s: -server: %w", cmd, err)
		}
		return ap, nil
	}
	switch cmd {
	case "probe-server":
		addrs := fs.String("addrs", "", "two addresses a1,a2")
		ports := fs.String("ports", fmt.Sprintf("%d,%d", ProbePort, ProbeAltPort), "two ports p1,p2")
		if err := fs.Parse(args); err != nil {
			return err
		}
		a, p, err := parseServerAddrs(*addrs, *ports)
		if err != nil {
			return err
		}
		s, err := ListenProbeServer(a, p)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, "ready")
		return s.Serve(ctx)

	case "classify":
		alt := fs.String("alt", "", "probe server alternate endpoint (other address, other port)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		srv, err := parseServer()
		if err != nil {
			return err
		}
		altAP, err := netip.ParseAddrPort(*alt)
		if err != nil {
			return fmt.Errorf("agent classify: -alt: %w", err)
		}
		r, err := Classify(ctx, srv, altAP, tm)
		if err != nil {
			return err
		}
		return enc.Encode(r)

	case "punch":
		interval := fs.Duration("interval", 20*time.Millisecond, "punch send interval")
		timeout := fs.Duration("timeout", 2*time.Second, "give up after")
		if err := fs.Parse(args); err != nil {
			return err
		}
		srv, err := parseServer()
		if err != nil {
			return err
		}
		s, err := NewPunchSession(ctx, srv, tm)
		if err != nil {
			return err
		}
		defer s.Close()
		fmt.Fprintf(stdout, "mapped %s\n", s.Mapped)
		peer, err := readPeer(ctx, os.Stdin)
		if err != nil {
			return err
		}
		return enc.Encode(s.Punch(ctx, peer, *interval, *timeout))

	case "query":
		changeIP := fs.Bool("change-ip", false, "ask for the reply from the alternate address")
		changePort := fs.Bool("change-port", false, "ask for the reply from the alternate port")
		delay := fs.Duration("delay", 0, "ask the server to hold the reply (mapping timeout tests)")
		port := fs.Int("port", 0, "bind the client socket to this local port (0: ephemeral)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		srv, err := parseServer()
		if err != nil {
			return err
		}
		var flags Flags
		if *changeIP {
			flags |= FlagChangeIP
		}
		if *changePort {
			flags |= FlagChangePort
		}
		if *port < 0 || *port > 65535 {
			return fmt.Errorf("agent query: -port %d out of range", *port)
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *port})
		if err != nil {
			return err
		}
		defer c.Close()
		rep, err := Query(ctx, c, srv, flags, *delay, tm)
		type out struct {
			OK bool `json:"ok"`
			Reply
		}
		if errors.Is(err, ErrNoReply) {
			return enc.Encode(out{})
		}
		if err != nil {
			return err
		}
		return enc.Encode(out{OK: true, Reply: rep})

	case "loss":
		count := fs.Int("count", 100, "requests to send")
		interval := fs.Duration("interval", 2*time.Millisecond, "gap between requests")
		wait := fs.Duration("linger", 500*time.Millisecond, "wait for replies after the last request")
		if err := fs.Parse(args); err != nil {
			return err
		}
		srv, err := parseServer()
		if err != nil {
			return err
		}
		r, err := MeasureLoss(ctx, srv, *count, *interval, *wait)
		if err != nil {
			return err
		}
		return enc.Encode(r)

	case "rendezvous":
		addr := fs.String("addr", "", "address to listen on")
		if err := fs.Parse(args); err != nil {
			return err
		}
		a, err := netip.ParseAddr(*addr)
		if err != nil {
			return fmt.Errorf("agent rendezvous: -addr: %w", err)
		}
		s, err := ListenRendezvous(a)
		if err != nil {
			return err
		}
		// PC2's own relay for the pairs that cannot punch.
		kp, err := identity.Generate(crand.Reader)
		if err != nil {
			return err
		}
		relay := circuit.NewServer(kp, circuit.Config{
			// A lab runs many trials a second from few addresses.
			ConnectsPerSecond: 1000, ConnectBurst: 1000, ReservationsPerSecond: 1000, ReservationBurst: 1000,
			HandshakesPerSecond: 1000, HandshakeBurst: 1000, HandshakesPerIP: 1000,
		})
		if _, err := relay.Listen(netip.AddrPortFrom(a, RelayPort).String()); err != nil {
			s.Close()
			return fmt.Errorf("agent rendezvous: relay: %w", err)
		}
		defer relay.Close()
		fmt.Fprintln(stdout, "ready relay-id="+kp.ID().String())
		return s.Serve(ctx)

	case "peer":
		name := fs.String("name", "", "this host's name (rendezvous registration)")
		alt := fs.String("alt", "", "probe server alternate endpoint")
		rdv := fs.String("rdv", "", "rendezvous host address")
		relayID := fs.String("relay-id", "", "node id of the PC2 relay on the rendezvous host (empty: no relay fallback)")
		latency := fs.Duration("latency", 0, "emulated one-way latency added to every datagram and signalling frame sent")
		if err := fs.Parse(args); err != nil {
			return err
		}
		srv, err := parseServer()
		if err != nil {
			return err
		}
		altAP, err := netip.ParseAddrPort(*alt)
		if err != nil {
			return fmt.Errorf("agent peer: -alt: %w", err)
		}
		rdvAddr, err := netip.ParseAddr(*rdv)
		if err != nil {
			return fmt.Errorf("agent peer: -rdv: %w", err)
		}
		if *latency < 0 || *latency > 10*time.Second {
			return fmt.Errorf("agent peer: -latency %v out of range", *latency)
		}
		var rid identity.ID
		if *relayID != "" {
			if rid, err = identity.ParseID(*relayID); err != nil {
				return fmt.Errorf("agent peer: -relay-id: %w", err)
			}
		}
		return runPeerAgent(ctx, *name, srv, altAP, rdvAddr, rid, *latency, os.Stdin, stdout)

	case "upload":
		n := fs.Int64("bytes", 1<<20, "bytes to upload")
		limit := fs.Duration("timeout", time.Minute, "give up after")
		if err := fs.Parse(args); err != nil {
			return err
		}
		srv, err := parseServer()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, *limit)
		defer cancel()
		r, err := MeasureUpload(ctx, srv, *n)
		if err != nil {
			return err
		}
		return enc.Encode(r)
	}
	return fmt.Errorf("natlab agent: unknown subcommand %q", cmd)
}

func parseServerAddrs(addrs, ports string) (a [2]netip.Addr, p [2]uint16, err error) {
	as := strings.Split(addrs, ",")
	ps := strings.Split(ports, ",")
	if len(as) != 2 || len(ps) != 2 {
		return a, p, errors.New("agent probe-server: want -addrs a1,a2 and -ports p1,p2")
	}
	for i := range 2 {
		if a[i], err = netip.ParseAddr(as[i]); err != nil {
			return a, p, fmt.Errorf("agent probe-server: %w", err)
		}
		v, err := strconv.ParseUint(ps[i], 10, 16)
		if err != nil || v == 0 {
			return a, p, fmt.Errorf("agent probe-server: bad port %q", ps[i])
		}
		p[i] = uint16(v)
	}
	if a[0] == a[1] || p[0] == p[1] {
		return a, p, errors.New("agent probe-server: addresses and ports must differ")
	}
	return a, p, nil
}

// readPeer reads one "peer ADDR:PORT" line (bounded) from r.
func readPeer(ctx context.Context, r io.Reader) (netip.AddrPort, error) {
	type result struct {
		ap  netip.AddrPort
		err error
	}
	ch := make(chan result, 1)
	go func() {
		br := bufio.NewReaderSize(io.LimitReader(r, 256), 256)
		line, err := br.ReadString('\n')
		if err != nil && line == "" {
			ch <- result{err: fmt.Errorf("agent punch: reading peer: %w", err)}
			return
		}
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "peer ")
		if !ok {
			ch <- result{err: fmt.Errorf("agent punch: want 'peer ADDR:PORT', got %q", line)}
			return
		}
		ap, err := netip.ParseAddrPort(rest)
		ch <- result{ap, err}
	}()
	select {
	case res := <-ch:
		return res.ap, res.err
	case <-ctx.Done():
		return netip.AddrPort{}, ctx.Err()
	}
}
