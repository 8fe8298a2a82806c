package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/relay/tunnel"
)

// runOursServer is the supernode's tunnel data path as `pc2 supernode`
// wires it (gateway/sniproxy in front of relay/tunnel), without the DHT,
// registry, DNS and HTTP services that frps has no counterpart for: names
// route to the first node that came up instead of a registry lookup.
func runOursServer(args []string) error {
	fs := flag.NewFlagSet("ours-server", flag.ExitOnError)
	sniAddr := fs.String("sni", "127.0.0.1:47643", "visitors' TLS (SNI) address")
	udpAddr := fs.String("tunnel", "127.0.0.1:47690", "UDP address nodes' QUIC tunnels connect to; the TLS-over-TCP fallback listens on the same TCP port")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here until exit")
	_ = fs.Parse(args)
	if stop, err := startProfile(*cpuprofile); err != nil {
		return err
	} else {
		defer stop()
	}

	var first atomic.Pointer[identity.ID]
	ts := tunnel.NewServer(supernodeKey(), tunnel.ServerConfig{
		// The idle test connects 1,000 nodes at once; frps has no
		// handshake limit either.
		HandshakesPerSecond: 1e6,
		HandshakeBurst:      1 << 20,
		OnUp: func(id identity.ID, _ net.Addr) {
			first.CompareAndSwap(nil, &id)
		},
	})
	if _, err := ts.Listen(*udpAddr); err != nil {
		return err
	}
	if _, err := ts.ListenTCP(*udpAddr); err != nil {
		return err
	}
	defer ts.Close()
	router := sniproxy.RouterFunc(func(_ context.Context, name string) (sniproxy.Target, error) {
		id := first.Load()
		if id == nil || !ts.Has(*id) {
			return sniproxy.Target{}, sniproxy.ErrUnknownName
		}
		nid := *id
		return sniproxy.Target{Dial: func(ctx context.Context, client net.Addr) (net.Conn, error) {
			return ts.Dial(ctx, nid, sniproxy.TunnelService, client)
		}}, nil
	})
	srv, err := sniproxy.New(sniproxy.Config{
		Router:          router,
		MaxConns:        20000,
		MaxPendingPerIP: 1024, // all load comes from 127.0.0.1
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *sniAddr)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	return srv.Serve(ctx, ln)
}

// runOursClient runs n node tunnel clients, each with its own key and UDP
// socket (like n separate nodes), all serving service "https" from -local.
func runOursClient(args []string) error {
	fs := flag.NewFlagSet("ours-client", flag.ExitOnError)
	supernode := fs.String("supernode", "127.0.0.1:47690", "supernode tunnel address")
	local := fs.String("local", "127.0.0.1:47600", "local TLS service")
	n := fs.Int("n", 1, "tunnel clients in this process")
	transport := fs.String("transport", "quic", "tunnel transport: quic or tcp (the TLS-over-TCP fallback)")
	dataConns := fs.Int("data-conns", 0, "idle data connections per node for TLS passthrough visitors (0: every visitor rides the tunnel)")
	watchStdin := fs.Bool("watch-stdin", true, "exit when stdin closes (the parent is gone)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here until exit")
	_ = fs.Parse(args)
	if stop, err := startProfile(*cpuprofile); err != nil {
		return err
	} else {
		defer stop()
	}

	cfg := tunnel.ClientConfig{
		Supernode:   *supernode,
		SupernodeID: supernodeKey().ID(),
		Services:    map[string]tunnel.Local{sniproxy.TunnelService: {Addr: *local}},
		LocalUDP:    "127.0.0.1:0",
		DataConns:   *dataConns,
	}
	switch *transport {
	case "quic":
		cfg.Transport = tunnel.TransportQUIC
	case "tcp":
		cfg.Transport = tunnel.TransportTCP
	default:
		return fmt.Errorf("transport %q is not available", *transport)
	}
	ctx, cancel := signalContext()
	defer cancel()
	if *watchStdin {
		go func() { io.Copy(io.Discard, os.Stdin); cancel() }() // parent gone: exit
	}

	clients := make([]*tunnel.Client, 0, *n)
	for range *n {
		kp, err := identity.Generate(rand.Reader)
		if err != nil {
			return err
		}
		c := tunnel.NewClient(kp, cfg)
		if err := c.Start(); err != nil {
			return err
		}
		clients = append(clients, c)
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	deadline := time.Now().Add(120 * time.Second)
	for {
		up := 0
		for _, c := range clients {
			if c.Up() {
				up++
			}
		}
		if up == len(clients) {
			fmt.Printf("up %d\n", up)
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d tunnels up", up, len(clients))
		}
		time.Sleep(50 * time.Millisecond)
	}
	<-ctx.Done()
	return nil
}

// startProfile starts a CPU profile to path ("" does nothing).
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
