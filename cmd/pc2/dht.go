package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	"github.com/elacity/pc2/dht/record"
)

// roleDHT is the role of `pc2 dht`: a host with only the DHT service.
const roleDHT = config.Role("dht")

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func dhtCommand() *command {
	var (
		cfgPath, data, logLevel, logFormat, metricsListen string
		dev, public                                       bool
		port                                              int
		boot                                              listFlag
	)
	return &command{
		name:    "dht",
		summary: "run a Level 2 DHT participant or query the DHT",
		help: `Without a command, runs a DHT node (Level 2 participant): the host with
only the DHT service, Boson-compatible, on UDP 39001 (IPv4 and IPv6):
  pc2 dht [--config file] [--dev] [--data dir] [--port n] [--bootstrap id@host:port]...

With --dev it needs no config file: loopback addresses, a free port,
developer mode (loopback contacts allowed), state in a temporary directory.
It joins nobody unless given --bootstrap nodes, or --public to join the
public Boson network (its bootstrap nodes speak v2: compat dialect).

The query commands start a short-lived client node that joins through
--bootstrap (or --public), does one operation and prints the result.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfgPath, "config", "", "configuration file (YAML, section dht); none: built-in defaults")
			fs.BoolVar(&dev, "dev", false, "development defaults: loopback, free port, developer mode, temporary data dir")
			fs.StringVar(&data, "data", "", "data directory (overrides the file)")
			fs.IntVar(&port, "port", -1, "UDP port (overrides the file; 0 picks one)")
			fs.Var(&boot, "bootstrap", "bootstrap node id@host:port (repeatable; adds to the file's list)")
			fs.BoolVar(&public, "public", false, "join the public Boson network through its bootstrap nodes")
			fs.StringVar(&logLevel, "log-level", "", "debug, info, warn or error (overrides the file)")
			fs.StringVar(&logFormat, "log-format", "", "text or json (overrides the file)")
			fs.StringVar(&metricsListen, "metrics", "", `metrics listen address host:port, or "off" (overrides the file)`)
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("unknown command %q", args[0])}
			}
			for i, b := range boot {
				if _, err := dhtnode.ParseBootstrap(b); err != nil {
					return usageError{fmt.Sprintf("--bootstrap #%d: %v", i+1, err)}
				}
			}
			svc := dhtnode.NewService()
			svc.Override = func(c *dhtnode.Config) {
				if port >= 0 {
					c.Port = port
				}
				c.Bootstrap = append(c.Bootstrap, boot...)
				if public {
					c.PublicNetwork = true
				}
			}
			cfg, err := config.Load(cfgPath, roleDHT, dev, []string{svc.Name()})
			if err != nil {
				return err
			}
			for flagValue, field := range map[*string]*string{&data: &cfg.DataDir, &logLevel: &cfg.Log.Level, &logFormat: &cfg.Log.Format, &metricsListen: &cfg.Metrics.Listen} {
				if *flagValue != "" {
					*field = *flagValue
				}
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			h, err := host.New(host.Options{Config: cfg, Services: []host.Service{svc}, Log: std.err})
			if err != nil {
				return err
			}
			return h.Run(ctx, func(info host.Info) {
				if err := host.NotifyReadyFD(info); err != nil {
					h.Logger().Warn("readiness notification failed", "err", err)
				}
				if os.Getenv("PC2_READY_FD") == "" {
					fmt.Fprintf(std.out, "dht node %s ready\n", info.DID)
					for _, k := range []string{"dht.udp4", "dht.udp6"} {
						if a := info.Extra[k]; a != "" {
							fmt.Fprintf(std.out, "  %s: %s@%s\n", strings.TrimPrefix(k, "dht."), info.ID, a)
						}
					}
					fmt.Fprintf(std.out, "  metrics: %s\n  data:    %s\n", info.Metrics, info.DataDir)
				}
			})
		},
		subs: []*command{
			dhtPing(), dhtFindNode(), dhtGet(), dhtPut(), dhtFindPeer(), dhtAnnounce(),
		},
	}
}

// clientFlags are the flags of the query commands.
type clientFlags struct {
	boot     listFlag
	public   bool
	dev      bool
	asJSON   bool
	direct   bool
	timeout  time.Duration
	dialect  string
	data     string
	keyFile  string
	withKey  bool
	noDirect bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.Var(&c.boot, "bootstrap", "node to join through, id@host:port (repeatable)")
	fs.BoolVar(&c.public, "public", false, "join through the public Boson bootstrap nodes")
	fs.BoolVar(&c.dev, "dev", false, "developer mode: allow loopback and private addresses")
	fs.BoolVar(&c.asJSON, "json", false, "print JSON")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "give up after this long")
	fs.StringVar(&c.dialect, "dialect", "", "v3, or compat to also speak Boson v2 (default: compat with --public)")
	if !c.noDirect {
		fs.BoolVar(&c.direct, "direct", false, "ask only the --bootstrap nodes, without an iterative lookup")
	}
	if c.withKey {
		fs.StringVar(&c.data, "data", config.Default(config.RoleNode, false).DataDir, "data directory holding the key file (pc2 id)")
		fs.StringVar(&c.keyFile, "key", "", "key file (default <data>/key)")
	}
}

// loadKey reads the identity that signs values and peer records.
func (c *clientFlags) loadKey() (*identity.KeyPair, error) {
	path := c.keyFile
	if path == "" {
		path = filepath.Join(c.data, "key")
	}
	kp, err := identity.LoadKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no key file at %s (create one with `pc2 id new`, or give --data/--key)", path)
	}
	return kp, err
}

// queryNode is a short-lived node for one query.
type queryNode struct {
	node  *dhtnode.Node
	boots []dhtnode.Contact
}

// startClient starts a client node on an ephemeral port and, unless
// direct, joins the network.
func (c *clientFlags) startClient(ctx context.Context) (*queryNode, error) {
	if len(c.boot) == 0 && !c.public {
		return nil, usageError{"give --bootstrap id@host:port (repeatable), or --public"}
	}
	cfg := dhtnode.DefaultConfig(c.dev)
	cfg.Port = 0
	cfg.Bootstrap = c.boot
	cfg.PublicNetwork = c.public
	cfg.Dialect = c.dialect
	cfg.DeveloperMode = c.dev
	if !c.dev {
		cfg.Bind4, cfg.Bind6 = "0.0.0.0", "::"
	}
	var boots []dhtnode.Contact
	want4, want6 := false, false
	all := append([]string(nil), c.boot...)
	if c.public {
		all = append(all, dhtnode.PublicBootstrap...)
	}
	for i, s := range all {
		b, err := dhtnode.ParseBootstrap(s)
		if err != nil {
			return nil, usageError{fmt.Sprintf("--bootstrap #%d: %v", i+1, err)}
		}
		addrs, err := resolveHost(ctx, b.Host)
		if err != nil {
			return nil, fmt.Errorf("bootstrap node %s: %w", b, err)
		}
		for _, a := range addrs {
			ap := netip.AddrPortFrom(a, b.Port)
			if ap.Addr().Is4() {
				want4 = true
			} else {
				want6 = true
			}
			boots = append(boots, dhtnode.Contact{ID: b.ID, Addr: ap})
			if !c.dev && !isPublic(a) {
				return nil, usageError{fmt.Sprintf("bootstrap node %s is not on a public address; use --dev", b)}
			}
		}
	}
	if !want4 {
		cfg.Bind4 = "off"
	}
	if !want6 {
		cfg.Bind6 = "off"
	}
	kp, err := identity.Generate(rand.Reader)
	if err != nil {
		return nil, err
	}
	n, err := dhtnode.New(cfg, dhtnode.Options{Identity: kp, Client: true})
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		return nil, err
	}
	cl := &queryNode{node: n, boots: boots}
	if !c.direct {
		if err := n.Bootstrap(ctx); err != nil {
			n.Close()
			return nil, fmt.Errorf("join: %w", err)
		}
	}
	return cl, nil
}

func isPublic(a netip.Addr) bool {
	a = a.Unmap()
	return !(a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsUnspecified())
}

func resolveHost(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
	if err != nil {
		return nil, err
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, nil
}

// withClient runs fn with a client node under the --timeout.
func (c *clientFlags) withClient(ctx context.Context, fn func(ctx context.Context, cl *queryNode) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cl, err := c.startClient(ctx)
	if err != nil {
		return err
	}
	defer cl.node.Close()
	return fn(ctx, cl)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func parseTarget(s string) (identity.ID, error) {
	id, err := identity.ParseID(s)
	if err != nil {
		return id, usageError{fmt.Sprintf("%q is not an id (Base58, 0x hex or did:boson:)", s)}
	}
	return id, nil
}

func dhtPing() *command {
	c := &clientFlags{noDirect: true}
	return &command{
		name:    "ping",
		args:    "id@host:port",
		summary: "ping one DHT node and print the round-trip time",
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&c.dev, "dev", false, "developer mode: allow loopback and private addresses")
			fs.BoolVar(&c.asJSON, "json", false, "print JSON")
			fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up after this long")
			fs.StringVar(&c.dialect, "dialect", "compat", "v3, or compat to fall back to Boson v2")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usageError{"give one node as id@host:port"}
			}
			c.boot = listFlag{args[0]}
			c.direct = true
			return c.withClient(ctx, func(ctx context.Context, cl *queryNode) error {
				to := cl.boots[0]
				rtt, err := cl.node.Ping(ctx, to)
				if err != nil {
					return fmt.Errorf("ping %s: %w", to, err)
				}
				if c.asJSON {
					return printJSON(std.out, map[string]any{"id": to.ID.String(), "addr": to.Addr.String(), "rttMs": float64(rtt.Microseconds()) / 1000})
				}
				fmt.Fprintf(std.out, "pong from %s at %s in %v\n", to.ID, to.Addr, rtt.Round(10*time.Microsecond))
				return nil
			})
		},
	}
}

type contactView struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
}

func dhtFindNode() *command {
	c := &clientFlags{}
	return &command{
		name:    "find-node",
		args:    "id",
		summary: "find the nodes closest to an id",
		flags:   c.register,
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usageError{"give one id"}
			}
			target, err := parseTarget(args[0])
			if err != nil {
				return err
			}
			return c.withClient(ctx, func(ctx context.Context, cl *queryNode) error {
				var found []dhtnode.Contact
				if c.direct {
					for _, b := range cl.boots {
						cs, err := cl.node.FindNodeFrom(ctx, b, target)
						if err != nil {
							return fmt.Errorf("%s: %w", b, err)
						}
						found = append(found, cs...)
					}
				} else if found, err = cl.node.FindNode(ctx, target); err != nil {
					return err
				}
				views := make([]contactView, len(found))
				for i, f := range found {
					views[i] = contactView{f.ID.String(), f.Addr.String()}
				}
				if c.asJSON {
					return printJSON(std.out, views)
				}
				if len(views) == 0 {
					return errors.New("no nodes found")
				}
				for _, v := range views {
					fmt.Fprintf(std.out, "%s@%s\n", v.ID, v.Addr)
				}
				return nil
			})
		},
	}
}

type valueView struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Seq       int32  `json:"seq,omitempty"`
	Owner     string `json:"owner,omitempty"`
	Recipient string `json:"recipient,omitempty"`
	Text      string `json:"text,omitempty"`
	Hex       string `json:"hex"`
	From      string `json:"from,omitempty"`
}

func viewValue(v *record.Value) valueView {
	vv := valueView{ID: v.ID().String(), Kind: v.Kind().String(), Seq: v.Seq, Hex: hex.EncodeToString(v.Data)}
	if v.Mutable() {
		vv.Owner = v.Owner.String()
	}
	if !v.Recipient.IsZero() {
		vv.Recipient = v.Recipient.String()
	}
	if printable(v.Data) && v.Kind() != record.Encrypted {
		vv.Text = string(v.Data)
	}
	return vv
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

func printValue(w io.Writer, v valueView) {
	fmt.Fprintf(w, "value %s\n  kind:  %s", v.ID, v.Kind)
	if v.Kind != "immutable" {
		fmt.Fprintf(w, " (seq %d)", v.Seq)
	}
	fmt.Fprintln(w)
	if v.Owner != "" {
		fmt.Fprintf(w, "  owner: %s\n", v.Owner)
	}
	if v.Recipient != "" {
		fmt.Fprintf(w, "  for:   %s\n", v.Recipient)
	}
	if v.From != "" {
		fmt.Fprintf(w, "  from:  %s\n", v.From)
	}
	if v.Text != "" {
		fmt.Fprintf(w, "  data:  %q\n", v.Text)
	} else {
		fmt.Fprintf(w, "  data:  %s (hex)\n", v.Hex)
	}
}

func dhtGet() *command {
	c := &clientFlags{}
	var first bool
	return &command{
		name:    "get",
		args:    "id...",
		summary: "look up values by id",
		help: `An immutable value is returned at the first valid copy; for a signed or
encrypted value the closest nodes are asked and the highest sequence
number wins (--first takes the first valid one). Every value is checked
(signature, size, id) before it is printed. Exits with status 1 if any
id is not found.`,
		flags: func(fs *flag.FlagSet) {
			c.register(fs)
			fs.BoolVar(&first, "first", false, "take the first valid mutable value instead of the highest seq")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) == 0 {
				return usageError{"give at least one id"}
			}
			var ids []identity.ID
			for _, a := range args {
				id, err := parseTarget(a)
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			return c.withClient(ctx, func(ctx context.Context, cl *queryNode) error {
				// One lookup per id, up to 8 at once; results in argument order.
				found := make([][]valueView, len(ids))
				errs := make([]error, len(ids))
				var wg sync.WaitGroup
				sem := make(chan struct{}, 8)
				for i, id := range ids {
					wg.Add(1)
					sem <- struct{}{}
					go func() {
						defer func() { <-sem; wg.Done() }()
						found[i], errs[i] = c.getOne(ctx, cl, id, first)
					}()
				}
				wg.Wait()
				var views []valueView
				var missing []string
				for i, id := range ids {
					switch {
					case errors.Is(errs[i], dhtnode.ErrNotFound):
						missing = append(missing, id.String())
					case errs[i] != nil:
						return fmt.Errorf("get %s: %w", id, errs[i])
					}
					views = append(views, found[i]...)
				}
				if c.asJSON {
					if err := printJSON(std.out, views); err != nil {
						return err
					}
				} else {
					for _, v := range views {
						printValue(std.out, v)
					}
				}
				if len(missing) > 0 {
					return fmt.Errorf("not found: %s", strings.Join(missing, ", "))
				}
				return nil
			})
		},
	}
}

// getOne looks up one value: iteratively, or with --direct from each
// bootstrap node (one view per node that has it).
func (c *clientFlags) getOne(ctx context.Context, cl *queryNode, id identity.ID, first bool) ([]valueView, error) {
	if !c.direct {
		v, err := cl.node.GetValue(ctx, id, dhtnode.GetOptions{First: first})
		if err != nil {
			return nil, err
		}
		return []valueView{viewValue(&v)}, nil
	}
	var views []valueView
	for _, b := range cl.boots {
		v, found, err := cl.node.GetValueFrom(ctx, b, id, dhtnode.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b, err)
		}
		if found {
			vv := viewValue(&v)
			vv.From = b.ID.String()
			views = append(views, vv)
		}
	}
	if len(views) == 0 {
		return nil, dhtnode.ErrNotFound
	}
	return views, nil
}

func dhtPut() *command {
	c := &clientFlags{withKey: true, noDirect: true}
	var (
		signed, isHex bool
		seq           int
	)
	return &command{
		name:    "put",
		args:    "data",
		summary: "store a value (immutable, or signed with your key)",
		help: `Stores data as an immutable value (its id is SHA-256 of the data, at most
1024 bytes), or with --signed as a mutable value signed by the key file
of --data (its id is your public key, at most 896 bytes). A signed value
replaces older ones only with a higher sequence number: without --seq the
current one is looked up and incremented. Prints the id and how many
nodes stored it.`,
		flags: func(fs *flag.FlagSet) {
			c.register(fs)
			fs.BoolVar(&signed, "signed", false, "store a mutable value signed with the key of --data")
			fs.IntVar(&seq, "seq", -1, "sequence number of a signed value (default: current + 1)")
			fs.BoolVar(&isHex, "hex", false, "data is hex")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usageError{"give the data as one argument"}
			}
			data := []byte(args[0])
			if isHex {
				var err error
				if data, err = hex.DecodeString(args[0]); err != nil {
					return usageError{fmt.Sprintf("--hex: %v", err)}
				}
			}
			var kp *identity.KeyPair
			if signed {
				var err error
				if kp, err = c.loadKey(); err != nil {
					return err
				}
			} else if seq >= 0 {
				return usageError{"--seq applies to --signed values"}
			}
			if !signed {
				if _, err := record.NewImmutable(data); err != nil {
					return err
				}
			} else if len(data) > record.MaxSignedData {
				return fmt.Errorf("a signed value holds at most %d bytes, got %d", record.MaxSignedData, len(data))
			}
			return c.withClient(ctx, func(ctx context.Context, cl *queryNode) error {
				var v record.Value
				var err error
				if signed {
					if seq < 0 {
						seq = 0
						if cur, err := cl.node.GetValue(ctx, kp.ID(), dhtnode.GetOptions{}); err == nil {
							seq = int(cur.Seq) + 1
						} else if !errors.Is(err, dhtnode.ErrNotFound) {
							return fmt.Errorf("look up the current value: %w", err)
						}
					}
					if seq > 1<<31-1 {
						return usageError{"--seq is above 2^31-1"}
					}
					v, err = record.NewSigned(kp, int32(seq), data)
				} else {
					v, err = record.NewImmutable(data)
				}
				if err != nil {
					return err
				}
				res, err := cl.node.PutValue(ctx, v, dhtnode.PutOptions{})
				if err != nil {
					return err
				}
				if c.asJSON {
					return printJSON(std.out, map[string]any{"id": v.ID().String(), "kind": v.Kind().String(), "seq": v.Seq, "stored": res.Stored, "failed": res.Failed})
				}
				fmt.Fprintf(std.out, "stored %s value %s", v.Kind(), v.ID())
				if v.Mutable() {
					fmt.Fprintf(std.out, " (seq %d)", v.Seq)
				}
				fmt.Fprintf(std.out, " on %d nodes", res.Stored)
				if res.Failed > 0 {
					fmt.Fprintf(std.out, " (%d refused or did not answer)", res.Failed)
				}
				fmt.Fprintln(std.out)
				return nil
			})
		},
	}
}

type peerView struct {
	ID          string          `json:"id"`
	Seq         int32           `json:"seq"`
	Fingerprint int64           `json:"fingerprint"`
	Endpoint    string          `json:"endpoint"`
	Node        string          `json:"node,omitempty"`
	Extra       json.RawMessage `json:"extra,omitempty"`
	ExtraHex    string          `json:"extraHex,omitempty"`
}

func viewPeer(p *record.PeerInfo) peerView {
	v := peerView{ID: p.ID.String(), Seq: p.Seq, Fingerprint: p.Fingerprint, Endpoint: p.Endpoint}
	if p.Authenticated() {
		v.Node = p.Node.String()
	}
	if len(p.Extra) > 0 {
		if json.Valid(p.Extra) {
			v.Extra = json.RawMessage(p.Extra)
		} else {
			v.ExtraHex = hex.EncodeToString(p.Extra)
		}
	}
	return v
}

func dhtFindPeer() *command {
	c := &clientFlags{}
	var count int
	return &command{
		name:    "find-peer",
		args:    "id",
		summary: "look up the peer records (endpoints) of a peer id",
		flags: func(fs *flag.FlagSet) {
			c.register(fs)
			fs.IntVar(&count, "count", 0, "stop after this many records (0: ask the k closest nodes)")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usageError{"give one peer id"}
			}
			id, err := parseTarget(args[0])
			if err != nil {
				return err
			}
			return c.withClient(ctx, func(ctx context.Context, cl *queryNode) error {
				var ps []record.PeerInfo
				if c.direct {
					for _, b := range cl.boots {
						got, err := cl.node.FindPeerFrom(ctx, b, id)
						if err != nil {
							return fmt.Errorf("%s: %w", b, err)
						}
						ps = append(ps, got...)
					}
					if len(ps) == 0 {
						err = dhtnode.ErrNotFound
					}
				} else {
					ps, err = cl.node.FindPeer(ctx, id, dhtnode.FindPeerOptions{Count: count})
				}
				if err != nil {
					return err
				}
				views := make([]peerView, len(ps))
				for i := range ps {
					views[i] = viewPeer(&ps[i])
				}
				if c.asJSON {
					return printJSON(std.out, views)
				}
				for _, v := range views {
					fmt.Fprintf(std.out, "peer %s\n  endpoint:    %s\n  seq:         %d\n  fingerprint: %d\n", v.ID, v.Endpoint, v.Seq, v.Fingerprint)
					if v.Node != "" {
						fmt.Fprintf(std.out, "  node:        %s\n", v.Node)
					}
					if v.Extra != nil {
						fmt.Fprintf(std.out, "  extra:       %s\n", v.Extra)
					} else if v.ExtraHex != "" {
						fmt.Fprintf(std.out, "  extra:       %s (hex)\n", v.ExtraHex)
					}
				}
				return nil
			})
		},
	}
}

func dhtAnnounce() *command {
	c := &clientFlags{withKey: true, noDirect: true}
	var (
		seq         int
		fingerprint int64
		extra       string
	)
	return &command{
		name:    "announce",
		args:    "endpoint",
		summary: "announce a peer record: your key is reachable at endpoint",
		help: `Announces a v3.1 peer record signed by the key file of --data: the peer id
is your public key, endpoint a URI such as tcp://203.0.113.5:9090 or
https://alice.example/. The fingerprint tells apart several instances of
one key; by default it is derived from the key, so repeated announces
update one record. Without --seq the current record is looked up and its
sequence number incremented.`,
		flags: func(fs *flag.FlagSet) {
			c.register(fs)
			fs.IntVar(&seq, "seq", -1, "sequence number (default: current + 1)")
			fs.Int64Var(&fingerprint, "fingerprint", 0, "instance fingerprint (default: derived from the key)")
			fs.StringVar(&extra, "extra", "", "extra data, conventionally a JSON object")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if len(args) != 1 {
				return usageError{"give the endpoint as one argument"}
			}
			kp, err := c.loadKey()
			if err != nil {
				return err
			}
			if fingerprint == 0 {
				sum := sha256.Sum256(append([]byte("pc2 dht announce fingerprint "), kp.ID().Bytes()...))
				fingerprint = int64(binary.BigEndian.Uint64(sum[:]) | 1)
			}
			if _, err := record.NewPeer(kp, nil, 0, fingerprint, args[0], []byte(extra)); err != nil {
				return err
			}
			return c.withClient(ctx, func(ctx context.Context, cl *queryNode) error {
				if seq < 0 {
					seq = 0
					ps, err := cl.node.FindPeer(ctx, kp.ID(), dhtnode.FindPeerOptions{})
					if err != nil && !errors.Is(err, dhtnode.ErrNotFound) {
						return fmt.Errorf("look up the current record: %w", err)
					}
					for _, p := range ps {
						if p.Fingerprint == fingerprint && int(p.Seq) >= seq {
							seq = int(p.Seq) + 1
						}
					}
				}
				if seq > 1<<31-1 {
					return usageError{"--seq is above 2^31-1"}
				}
				p, err := record.NewPeer(kp, nil, int32(seq), fingerprint, args[0], []byte(extra))
				if err != nil {
					return err
				}
				res, err := cl.node.AnnouncePeer(ctx, p, dhtnode.PutOptions{})
				if err != nil {
					return err
				}
				if c.asJSON {
					return printJSON(std.out, map[string]any{"id": p.ID.String(), "seq": p.Seq, "fingerprint": p.Fingerprint, "endpoint": p.Endpoint, "stored": res.Stored, "failed": res.Failed})
				}
				fmt.Fprintf(std.out, "announced peer %s at %s (seq %d) on %d nodes\n", p.ID, p.Endpoint, p.Seq, res.Stored)
				return nil
			})
		},
	}
}
