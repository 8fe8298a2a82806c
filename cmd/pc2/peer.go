package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/transport/peer"
	"github.com/elacity/pc2/transport/peer/directory"
	"github.com/elacity/pc2/transport/stun"
	"github.com/elacity/pc2/transport/udpmux"
)

// peerCommand: node-to-node connections without running a node.
func peerCommand() *command {
	return &command{
		name:    "peer",
		summary: "reach another node by id: relayed first, then direct when a hole punch works",
		subs:    []*command{peerPingCommand(), peerLookupCommand()},
	}
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// startDHTClient joins the DHT as a short-lived client through boot.
func startDHTClient(ctx context.Context, kp *identity.KeyPair, boot []string) (*dhtnode.Node, error) {
	cfg := dhtnode.DefaultConfig(false)
	cfg.Port, cfg.Bind6, cfg.Client, cfg.Bootstrap = 0, "off", true, boot
	for _, b := range boot {
		_, addr, _ := strings.Cut(b, "@")
		if ap, err := netip.ParseAddrPort(addr); err == nil && !routing.IsGlobal(ap.Addr()) {
			cfg.DeveloperMode = true // a lab or a loopback devnet
		}
	}
	n, err := dhtnode.New(cfg, dhtnode.Options{Identity: kp, Client: true})
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	if err := n.Bootstrap(ctx); err != nil {
		n.Close()
		return nil, fmt.Errorf("dht: %w", err)
	}
	return n, nil
}

func peerLookupCommand() *command {
	var boot stringList
	return &command{
		name:    "lookup",
		args:    "<id>",
		summary: "print a node's signed peer record from the DHT (relays, candidates, NAT class)",
		flags: func(fs *flag.FlagSet) {
			fs.Var(&boot, "dht", "DHT bootstrap node id@host:port (repeatable; required)")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 || len(boot) == 0 {
				return usageError{"want one node id and --dht"}
			}
			id, err := identity.ParseID(strings.TrimPrefix(args[0], identity.DIDPrefix))
			if err != nil {
				return usageError{err.Error()}
			}
			kp, err := identity.Generate(rand.Reader)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			n, err := startDHTClient(ctx, kp, boot)
			if err != nil {
				return err
			}
			defer n.Close()
			r, err := directory.Lookup(ctx, n, id, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintf(std.out, "id       %s\nissued   %s\nnat      %s (hard: %v)\n", r.ID, time.Unix(r.Issued, 0).UTC().Format(time.RFC3339), r.NAT, r.Hard)
			for _, c := range r.UDP {
				fmt.Fprintf(std.out, "udp      %s\n", c)
			}
			for _, rl := range r.Relays {
				fmt.Fprintf(std.out, "relay    %s@%s\n", rl.ID, rl.Addr)
			}
			return nil
		},
	}
}

// hintResolver answers with the relays given on the command line, else
// from the DHT.
type hintResolver struct {
	via []peer.RelayInfo
	dir *directory.Directory
}

func (h hintResolver) Resolve(ctx context.Context, id identity.ID) (peer.Info, error) {
	if len(h.via) > 0 {
		return peer.Info{Relays: h.via}, nil
	}
	if h.dir == nil {
		return peer.Info{}, errors.New("no --via relay and no --dht to find the peer")
	}
	r, err := h.dir.Resolve(ctx, id)
	if err != nil {
		return peer.Info{}, err
	}
	return peer.InfoOf(r), nil
}

func peerPingCommand() *command {
	var (
		via, boot        stringList
		stunServer       string
		listen           string
		count, size      int
		interval, limit  time.Duration
		printEveryPacket bool
	)
	return &command{
		name:    "ping",
		args:    "<id>",
		summary: "echo through an end-to-end connection to a node (its peer.echo on), showing the path",
		help: `Runs a short-lived endpoint (fresh key, one UDP socket), finds the node
through --via (a relay where it holds a reservation) or its signed record in
the DHT (--dht), connects through the relay and sends echo requests on one
stream while a hole punch is tried. Each line gives the round trip and the
path; path changes are printed as they happen. Every echo is checked byte
for byte: a lost or reordered byte ends the run with an error. --stun gives
the socket's reflexive address to punch with (needed behind NAT).`,
		flags: func(fs *flag.FlagSet) {
			fs.Var(&via, "via", "relay id@host:port where the node is reserved (repeatable)")
			fs.Var(&boot, "dht", "DHT bootstrap node id@host:port (repeatable): find the node's record")
			fs.StringVar(&stunServer, "stun", "", "STUN server ip:port (a supernode's stun service)")
			fs.StringVar(&listen, "listen", "0.0.0.0:0", "local UDP address")
			fs.IntVar(&count, "count", 5, "echo requests (0: until interrupted)")
			fs.IntVar(&size, "size", 64, "bytes per request (16..65536)")
			fs.DurationVar(&interval, "interval", time.Second, "time between requests")
			fs.DurationVar(&limit, "timeout", 30*time.Second, "give up connecting after")
			fs.BoolVar(&printEveryPacket, "v", true, "print every echo (false: path changes and the summary only)")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usageError{"want one node id"}
			}
			id, err := identity.ParseID(strings.TrimPrefix(args[0], identity.DIDPrefix))
			if err != nil {
				return usageError{err.Error()}
			}
			if size < 16 || size > 65536 || count < 0 || interval < 0 {
				return usageError{"--size 16..65536, --count ≥ 0, --interval ≥ 0"}
			}
			res := hintResolver{}
			for _, v := range via {
				ri, err := peer.ParseRelay(v)
				if err != nil {
					return usageError{err.Error()}
				}
				res.via = append(res.via, ri)
			}
			kp, err := identity.Generate(rand.Reader)
			if err != nil {
				return err
			}
			mux, err := udpmux.Listen("udp4", listen, udpmux.Options{})
			if err != nil {
				return err
			}
			defer mux.Close()
			cands := peer.Candidates{}
			if la := mux.LocalAddr(); !la.Addr().IsUnspecified() {
				cands.UDP = append(cands.UDP, la)
			}
			if stunServer != "" {
				srv, err := netip.ParseAddrPort(stunServer)
				if err != nil {
					return usageError{"--stun: " + err.Error()}
				}
				sc := stun.NewClient(mux)
				mux.Handle(stun.IsResponse, sc.Deliver)
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				a, err := sc.Binding(sctx, srv, 0)
				cancel()
				if err != nil {
					return fmt.Errorf("stun: %w", err)
				}
				cands.UDP = append([]netip.AddrPort{a.Mapped}, cands.UDP...)
				fmt.Fprintf(std.out, "reflexive %s\n", a.Mapped)
			}
			if len(boot) > 0 {
				dctx, cancel := context.WithTimeout(ctx, limit)
				n, err := startDHTClient(dctx, kp, boot)
				cancel()
				if err != nil {
					return err
				}
				defer n.Close()
				res.dir = directory.New(func() *dhtnode.Node { return n }, nil)
			}
			var outMu sync.Mutex
			say := func(format string, a ...any) {
				outMu.Lock()
				defer outMu.Unlock()
				fmt.Fprintf(std.out, format, a...)
			}
			t0 := time.Now()
			e, err := peer.New(peer.Config{
				Key: kp, Mux: mux, Resolver: res,
				Candidates: func() peer.Candidates { return cands },
				OnEvent: func(ev peer.Event) {
					if ev.Peer == id {
						say("path %s at %.3fs (%s)\n", ev.Path, ev.At.Sub(t0).Seconds(), ev.Why)
					}
				},
			})
			if err != nil {
				return err
			}
			defer e.Close()
			dctx, cancel := context.WithTimeout(ctx, limit)
			s, err := e.Dial(dctx, id, peer.EchoProtocol)
			cancel()
			if err != nil {
				return err
			}
			defer s.Close()
			say("connected to %s in %v over %s\n", id, time.Since(t0).Round(time.Microsecond), s.Path())
			req, got := make([]byte, size), make([]byte, size)
			var n, bytesOK int
			var rtts []time.Duration
			for seq := 1; count == 0 || seq <= count; seq++ {
				if seq > 1 && interval > 0 {
					select {
					case <-ctx.Done():
						count = -1
					case <-time.After(interval):
					}
					if count < 0 {
						break
					}
				}
				_, _ = rand.Read(req)
				binary.BigEndian.PutUint64(req, uint64(seq))
				_ = s.SetDeadline(time.Now().Add(10 * time.Second))
				t := time.Now()
				if _, err := s.Write(req); err != nil {
					return fmt.Errorf("request %d: %w", seq, err)
				}
				if _, err := io.ReadFull(s, got); err != nil {
					return fmt.Errorf("echo %d: %w", seq, err)
				}
				rtt := time.Since(t)
				if !bytes.Equal(req, got) {
					return fmt.Errorf("echo %d differs from the request: bytes lost or reordered", seq)
				}
				n++
				bytesOK += size
				rtts = append(rtts, rtt)
				if printEveryPacket {
					say("seq=%d bytes=%d rtt=%v path=%s\n", seq, size, rtt.Round(time.Microsecond), s.Path())
				}
			}
			st := e.Stats()
			say("%d echoes, %d bytes, all intact; rtt median %v max %v; datagrams direct %d/%d, relayed %d/%d (sent/received)\n",
				n, bytesOK, median(rtts).Round(time.Microsecond), slices.Max(append(rtts, 0)).Round(time.Microsecond),
				st.SentDirect, st.RecvDirect, st.SentRelay, st.RecvRelay)
			return nil
		},
	}
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	c := slices.Clone(d)
	slices.Sort(c)
	return c[len(c)/2]
}
