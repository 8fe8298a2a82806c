package portmap_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
	"github.com/elacity/pc2/transport/portmap"
)

// agentEnv makes the test binary act as a NAT lab agent (see TestMain).
const agentEnv = "PC2_PORTMAP_TEST_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		if err := agent(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "agent:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// agent runs inside a lab namespace:
//
//	hold -port P -proto pcp,nat-pmp,upnp -lifetime D: serve UDP echo on P,
//	    map it, print the Mapping as JSON; on "close" from stdin delete it
//	    and print "closed"; print each renewed mapping as JSON too.
//	ping ADDR: send a datagram to ADDR, print the answer (exit 1 if none).
func agent(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("no agent command")
	}
	switch args[0] {
	case "ping":
		c, err := net.Dial("udp4", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		tries := 3
		if len(args) > 2 {
			if tries, err = strconv.Atoi(args[2]); err != nil {
				return fmt.Errorf("ping tries: %w", err)
			}
		}
		buf := make([]byte, 256)
		for range tries {
			c.Write([]byte("ping"))
			c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
			if n, err := c.Read(buf); err == nil {
				fmt.Println(string(buf[:n]))
				return nil
			}
		}
		return fmt.Errorf("no answer from %s", args[1])
	case "hold":
		fs := flag.NewFlagSet("hold", flag.ContinueOnError)
		port := fs.Int("port", 0, "")
		protos := fs.String("proto", "", "")
		lifetime := fs.Duration("lifetime", 0, "")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{Port: *port})
		if err != nil {
			return err
		}
		defer uc.Close()
		go func() {
			buf := make([]byte, 256)
			for {
				_, from, err := uc.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				uc.WriteToUDPAddrPort([]byte("echo "+from.String()), from)
			}
		}()
		var ps []portmap.Protocol
		for _, p := range strings.Split(*protos, ",") {
			ps = append(ps, portmap.Protocol(p))
		}
		enc := json.NewEncoder(os.Stdout)
		start := time.Now()
		m, err := portmap.Map(context.Background(), portmap.Config{Port: uint16(*port), Protocols: ps, Lifetime: *lifetime,
			OnChange: func(mp portmap.Mapping) { enc.Encode(mp) }})
		if err != nil {
			return err
		}
		if err := enc.Encode(held{m.Mapping(), time.Since(start)}); err != nil {
			return err
		}
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "close" {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := m.Close(ctx)
				cancel()
				if err != nil {
					return err
				}
				fmt.Println("closed")
			}
		}
		return nil
	}
	return natlab.AgentMain(context.Background(), args, os.Stdout, os.Stderr) // the lab's own (probe server)
}

// held is what the hold agent prints first: the mapping and how long Map took.
type held struct {
	portmap.Mapping
	Took time.Duration
}

// TestMapInNATLab asks miniupnpd on a port-restricted lab router for a UDP
// mapping with each protocol alone and with all three probed at once, and checks
// from an internet host that the mapped port reaches the private host only
// while the mapping exists: nothing before, an echo during, nothing after
// Close. NAT-PMP runs with a 4 s lifetime and is checked until 6 s, which
// only works if the mapping is renewed.
func TestMapInNATLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (NAT lab)")
	}
	if err := natlab.CheckDeps(true); err != nil {
		t.Skipf("NAT lab dependencies missing (pc2 natlab install-deps): %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts, err := natlab.ParseNATSpec("prc,upnp")
	if err != nil {
		t.Fatal(err)
	}
	topo := natlab.Topology{Name: "portmap",
		Public: []natlab.PublicHost{{Name: "probe", ProbeServer: true}, {Name: "peer"}},
		NATs:   []natlab.NAT{{Name: "gw", Options: opts, Hosts: []string{"h1"}}}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("pmap%d", os.Getpid()),
		Launcher: natlab.Launcher{Path: exe, Env: []string{agentEnv + "=1"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		id := lab.ID
		if err := lab.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
		if nss, _ := natlab.Namespaces(id); len(nss) > 0 {
			t.Errorf("lab left namespaces %v", nss)
		}
	})
	gw, _ := lab.Node("gw")
	wan := gw.Addrs[0]
	peer, _ := lab.Node("peer")
	// An absence is bounded by 3 tries of 400 ms; an answer that must come
	// gets 12 tries (4.8 s) on a loaded machine.
	ping := func(ap netip.AddrPort, tries int) (string, bool) {
		out, err := lab.RunAgent(ctx, "peer", "ping", ap.String(), strconv.Itoa(tries))
		return strings.TrimSpace(out), err == nil
	}
	reachable := func(ap netip.AddrPort) (string, bool) { return ping(ap, 3) }
	mustReach := func(ap netip.AddrPort) (string, bool) { return ping(ap, 12) }

	for i, tc := range []struct {
		protos   string
		lifetime time.Duration
		want     portmap.Protocol
		renewed  bool
	}{
		{"pcp", time.Hour, portmap.PCP, false},
		{"nat-pmp", 4 * time.Second, portmap.NATPMP, true},
		{"upnp", time.Hour, portmap.UPnP, false},
		// All at once: probed together, PCP maps (checked for 5 s: the
		// other probes must leave the mapping alone).
		{"pcp,nat-pmp,upnp", 3 * time.Second, "", true},
	} {
		t.Run(tc.protos, func(t *testing.T) {
			port := uint16(40001 + i)
			if out, ok := reachable(netip.AddrPortFrom(wan, port)); ok {
				t.Fatalf("port %d reachable before mapping: %q", port, out)
			}
			p, err := lab.StartAgent(ctx, "h1", []string{"hold", "-port", fmt.Sprint(port), "-proto", tc.protos,
				"-lifetime", tc.lifetime.String()}, natlab.StartOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop(time.Second)
			line, err := p.NextLine(ctx)
			if err != nil {
				t.Fatalf("hold: %v: %s", err, p.Stderr())
			}
			var h held
			if err := json.Unmarshal([]byte(line), &h); err != nil {
				t.Fatalf("hold printed %q: %v", line, err)
			}
			m := h.Mapping
			t.Logf("mapping: %s (Map took %s)", m, h.Took)
			if (tc.want != "" && m.Protocol != tc.want) || m.External.Addr() != wan || m.Internal.Port() != port {
				t.Fatalf("mapping %s; want %s on %s", m, tc.want, wan)
			}
			// Reachable now; with a short lifetime, reachable all along
			// until well past it (only if renewed).
			until := time.Now()
			if tc.renewed {
				until = until.Add(tc.lifetime + 2*time.Second)
			}
			for {
				out, ok := mustReach(m.External)
				if !ok || !strings.HasPrefix(out, "echo "+peer.Addrs[0].String()+":") {
					t.Fatalf("mapped %s not reachable from the internet (%q)", m.External, out)
				}
				if time.Now().After(until) {
					break
				}
			}
			if err := p.WriteLine("close"); err != nil {
				t.Fatal(err)
			}
			for {
				line, err := p.NextLine(ctx)
				if err != nil {
					t.Fatalf("no 'closed': %v: %s", err, p.Stderr())
				}
				if line == "closed" {
					break
				}
			}
			if out, ok := reachable(m.External); ok {
				t.Fatalf("%s still reachable after Close: %q", m.External, out)
			}
		})
	}
}
