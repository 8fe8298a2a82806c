package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/elacity/pc2/transport/portmap"
	"github.com/elacity/pc2/transport/stun"
)

// natCommand: look at the NAT in front of this host without running a node.
func natCommand() *command {
	return &command{
		name:    "nat",
		summary: "discover this host's reflexive address, NAT class and port mapping",
		subs:    []*command{natProbeCommand(), natMapCommand()},
	}
}

func natProbeCommand() *command {
	var (
		server, listen string
		asJSON         bool
		rto            time.Duration
	)
	return &command{
		name:    "probe",
		summary: "ask a STUN server (a supernode's stun service, coturn...) for the reflexive address and NAT class",
		help: `Runs the RFC 5780 mapping tests on one socket and the filtering tests on a
second one. A server with two addresses and two ports (a supernode's stun
service with otherAddr and otherPort, or coturn with two listening IPs and
an alternate port) gives the full class; a server with one address gives
what one address can tell; any other STUN server gives the reflexive
address only.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&server, "server", "", "STUN server ip:port (required)")
			fs.StringVar(&listen, "listen", "0.0.0.0:0", "local UDP address")
			fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
			fs.DurationVar(&rto, "rto", stun.DefaultTiming.RTO, "first retransmission timeout (3 tries, doubling)")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			srv, err := netip.ParseAddrPort(server)
			if err != nil {
				return usageError{"--server: want ip:port: " + err.Error()}
			}
			m, err := stun.Listen("udp", listen)
			if err != nil {
				return err
			}
			defer m.Close()
			f, err := stun.Listen("udp", netip.AddrPortFrom(m.LocalAddr().Addr(), 0).String())
			if err != nil {
				return err
			}
			defer f.Close()
			m.Timing.RTO, f.Timing.RTO = rto, rto
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			res, err := stun.Classify(ctx, m, f, srv, m.LocalAddr())
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(std.out).Encode(res)
			}
			fmt.Fprintf(std.out, "local      %s\nreflexive  %s\nmapping    %s\nfiltering  %s\n", m.LocalAddr(), res.Mapped, res.Mapping, res.Filtering)
			for _, n := range res.Notes {
				fmt.Fprintf(std.out, "note       %s\n", n)
			}
			return nil
		},
	}
}

func natMapCommand() *command {
	var (
		port      int
		gateway   string
		protocols string
		lifetime  time.Duration
		asJSON    bool
	)
	return &command{
		name:    "map",
		summary: "ask the gateway for a UDP port mapping (PCP, NAT-PMP, UPnP at once), print it, delete it",
		help: `Maps --port, prints the mapping and deletes it again: a check that the
gateway grants mappings.`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&port, "port", 0, "local UDP port to map (required)")
			fs.StringVar(&gateway, "gateway", "", "gateway address (default: the default route's)")
			fs.StringVar(&protocols, "protocols", "pcp,nat-pmp,upnp", "protocols to try at once")
			fs.DurationVar(&lifetime, "lifetime", 2*time.Hour, "lifetime to ask for")
			fs.BoolVar(&asJSON, "json", false, "print the mapping as JSON")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if port <= 0 || port > 65535 {
				return usageError{"--port: want 1-65535"}
			}
			cfg := portmap.Config{Port: uint16(port), Lifetime: lifetime}
			if gateway != "" {
				gw, err := netip.ParseAddr(gateway)
				if err != nil {
					return usageError{"--gateway: " + err.Error()}
				}
				cfg.Gateway = gw
			}
			for _, p := range strings.Split(protocols, ",") {
				cfg.Protocols = append(cfg.Protocols, portmap.Protocol(strings.TrimSpace(p)))
			}
			m, err := portmap.Map(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				err = json.NewEncoder(std.out).Encode(m.Mapping())
			} else {
				_, err = fmt.Fprintln(std.out, m.Mapping())
			}
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if cerr := m.Close(dctx); cerr != nil {
				return fmt.Errorf("delete mapping: %w", cerr)
			}
			return err
		},
	}
}
