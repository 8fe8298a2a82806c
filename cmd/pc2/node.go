package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	dhtnode "github.com/elacity/pc2/dht/node"
	fedmesh "github.com/elacity/pc2/federation/mesh"
	"github.com/elacity/pc2/gateway/dns"
	"github.com/elacity/pc2/gateway/httproute"
	"github.com/elacity/pc2/gateway/sniproxy"
	"github.com/elacity/pc2/plugins/registry"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/dhtpub"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/relay/tunnel"
	"github.com/elacity/pc2/transport/nat"
	"github.com/elacity/pc2/transport/peer"
	"github.com/elacity/pc2/transport/stun"
)

type role struct {
	role    config.Role
	summary string
	help    string
	// services returns the services of this role, in start order, and the
	// config sections they read.
	services func() []host.Service
}

var roleSupernode = role{
	role:    config.RoleSupernode,
	summary: "run a supernode: gateway, names, DNS and DHT (Level 4)",
	help: `A supernode needs nothing else running. With --dev it starts with no
config file: state in a temporary directory, free loopback ports. It runs a
bootstrap DHT node (section dht), the name registry API (registry) whose
names it announces in the DHT (dhtpub), authoritative DNS (dns), plain HTTP
routed by Host (http), QUIC tunnels for nodes behind NAT (tunnel, UDP :8090),
a relay for peers that cannot connect directly (relay, UDP :39004; it
forwards the packets of their end-to-end QUIC connection under quotas),
TLS passthrough routed by SNI (sni) and STUN for nodes discovering their NAT
(stun, UDP :3478); a name whose owner holds a tunnel here is served over the
tunnel. Supernodes federate (mesh, UDP :39003):
they share registrations, forward visitors to the supernode holding a
node's tunnel, and DNS answers only with supernodes that are alive.
'pc2 supernode status' shows the mesh of a running supernode.`,
	services: func() []host.Service {
		dht := dhtnode.NewService()
		pub := dhtpub.New(dht)
		reg := registry.New()
		var tun *tunnel.ServerService
		mesh := fedmesh.NewService(reg, tunnelIDs{&tun})
		tun = tunnel.NewServerService(mesh) // admits nodes owning a name anywhere in the federation
		mesh.DHT, mesh.Next, mesh.Resolver = dht, pub, pub
		reg.Publisher, reg.Claims = mesh, mesh
		sni := sniproxy.NewService(mesh)
		sni.Tunnels = mesh // names of nodes with a tunnel here go over it, else over the mesh
		// Start order matters: the DHT before the publisher, the registry
		// before the mesh (which sends its names to peers) and DNS (which
		// reads its zones at start).
		web := httproute.New(mesh)
		web.Tunnels = mesh // names whose http is "tunnel": over the tunnel here, else over the mesh
		return []host.Service{dht, pub, reg, mesh, dns.New(mesh), web, tun, circuit.NewService(mesh, true), sni, stun.NewService()}
	},
}

// tunnelIDs lets the mesh, built before the tunnel server, reach it.
type tunnelIDs struct{ tun **tunnel.ServerService }

func (t tunnelIDs) Has(id identity.ID) bool { return *t.tun != nil && (*t.tun).Has(id) }
func (t tunnelIDs) Dial(ctx context.Context, id identity.ID, service string, visitor net.Addr) (net.Conn, error) {
	return (*t.tun).Dial(ctx, id, service, visitor)
}
func (t tunnelIDs) IDs() []identity.ID {
	if *t.tun == nil {
		return nil
	}
	return (*t.tun).IDs()
}

var roleNode = role{
	role:    config.RoleNode,
	summary: "run a user node (Level 1)",
	help: `A user node exposes local services through supernodes and talks to other
nodes directly. With --dev it starts with no config file. It keeps the names
of its "names" section registered at a supernode and renews them, and keeps
a QUIC tunnel to the supernode of its "tunnel-client" section (supernode,
supernodeID, services: [{name: https, addr: 127.0.0.1:4200}]), so its names
are served through the supernode even behind NAT. Its "nat" section opens
the node's shared UDP socket, finds its reflexive address and NAT class from
STUN servers (stun: [supernode:3478]) and asks the home gateway for a port
mapping (PCP, NAT-PMP or UPnP); the tunnel runs on that same socket. With
"relay: {enabled: true}" (and a public address or port mapping) it also
relays for other peers (Level 3), under the quotas of that section. Its
"peer" section makes it reachable by other nodes by id: it keeps
reservations at relays (relays: [id@host:port], e.g. a supernode's relay),
publishes a signed record of its relays and candidates in the DHT (section
dht, as a client: bootstrap: [id@host:39001]), and connections between
nodes start on a relay and move to a direct path when a hole punch works
('pc2 peer ping' shows it; "echo: true" answers it).`,
	services: func() []host.Service {
		natSvc := nat.NewService()
		tun := tunnel.NewClientService()
		tun.Shared = natSvc.Mux // the tunnel uses the socket whose NAT mapping nat discovers
		// A node takes part in the DHT as a client: it publishes its peer
		// record and looks others up, but is not in routing tables.
		dht := dhtnode.NewService()
		dht.Defaults = func(c *dhtnode.Config) { c.Port, c.Client = 0, true }
		return []host.Service{natSvc, dht, client.NewService(), tun, circuit.NewService(nil, false), peer.NewService(natSvc, dht)}
	},
}

func nodeCommand(r role) *command {
	var (
		cfgPath, data, logLevel, logFormat, metricsListen string
		dev                                               bool
	)
	return &command{
		name:    string(r.role),
		summary: r.summary,
		help:    r.help,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfgPath, "config", "", "configuration file (YAML); none: built-in defaults")
			fs.BoolVar(&dev, "dev", false, "development defaults: temporary data dir, metrics on a free loopback port")
			fs.StringVar(&data, "data", "", "data directory (overrides the file)")
			fs.StringVar(&logLevel, "log-level", "", "debug, info, warn or error (overrides the file)")
			fs.StringVar(&logFormat, "log-format", "", "text or json (overrides the file)")
			fs.StringVar(&metricsListen, "metrics", "", `metrics listen address host:port, or "off" (overrides the file)`)
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			services := r.services()
			sections := make([]string, len(services))
			for i, s := range services {
				sections[i] = s.Name()
			}
			cfg, err := config.Load(cfgPath, r.role, dev, sections)
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
			h, err := host.New(host.Options{Config: cfg, Services: services, Log: std.err})
			if err != nil {
				return err
			}
			return h.Run(ctx, func(info host.Info) {
				for _, s := range services {
					if r, ok := s.(interface{ HostReady(host.Info) }); ok {
						r.HostReady(info) // e.g. the mesh announces endpoints of services started after it
					}
				}
				if err := host.NotifyReadyFD(info); err != nil {
					h.Logger().Warn("readiness notification failed", "err", err)
				}
				if dev && os.Getenv("PC2_READY_FD") == "" { // the devnet prints its own summary
					fmt.Fprintf(std.out, "%s %s ready\n  metrics: %s\n  data:    %s\n", r.role, info.DID, info.Metrics, info.DataDir)
				}
			})
		},
	}
}
