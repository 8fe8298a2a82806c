package stun_test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/tools/natlab"
	"github.com/elacity/pc2/transport/stun"
	"github.com/elacity/pc2/transport/udpmux"
)

// agentEnv makes the test binary act as a NAT lab agent (see TestMain).
const agentEnv = "PC2_STUN_TEST_AGENT"

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

// agent runs "server PRIMARY OTHERADDR OTHERPORT" (until stdin closes) or
// "classify SERVER" (prints the Result as JSON) inside a lab namespace.
func agent(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil || fs.NArg() < 2 {
		return fmt.Errorf("usage: server|classify ...")
	}
	switch fs.Arg(0) {
	case "server":
		var cfg stun.ServerConfig
		var err error
		if cfg.Listen, err = netip.ParseAddrPort(fs.Arg(1)); err != nil {
			return err
		}
		if cfg.OtherAddr, err = netip.ParseAddr(fs.Arg(2)); err != nil {
			return err
		}
		var port int
		fmt.Sscan(fs.Arg(3), &port)
		cfg.OtherPort = uint16(port)
		s, err := stun.ListenServer(cfg)
		if err != nil {
			return err
		}
		defer s.Close()
		fmt.Println("ready")
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
		}
		return nil
	case "classify":
		server, err := netip.ParseAddrPort(fs.Arg(1))
		if err != nil {
			return err
		}
		// The mapping tests run on a udpmux, as on a node.
		m, err := udpmux.Listen("udp4", "0.0.0.0:0", udpmux.Options{})
		if err != nil {
			return err
		}
		defer m.Close()
		c := stun.NewClient(m)
		m.Handle(stun.IsResponse, c.Deliver)
		f, err := stun.Listen("udp4", "0.0.0.0:0")
		if err != nil {
			return err
		}
		defer f.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		res, err := stun.Classify(ctx, c, f, server, m.LocalAddr())
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	return fmt.Errorf("unknown agent %q", fs.Arg(0))
}

// TestClassifyInNATLab runs our STUN server on a two-address public host
// and our classifier behind each NAT profile of the lab, and checks that
// the class it finds is the one the lab declares (RFC 4787 mapping and
// filtering; the lab's symmetric profile is APDM/APDF).
func TestClassifyInNATLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (NAT lab)")
	}
	if err := natlab.CheckDeps(false); err != nil {
		t.Skipf("NAT lab dependencies missing (pc2 natlab install-deps): %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var nats []natlab.NAT
	specs := []string{"fc", "arc", "prc", "sym"}
	for _, spec := range specs {
		o, err := natlab.ParseNATSpec(spec)
		if err != nil {
			t.Fatal(err)
		}
		nats = append(nats, natlab.NAT{Name: spec, Options: o, Hosts: []string{spec + "1"}})
	}
	topo := natlab.Topology{Name: "stun", Public: []natlab.PublicHost{{Name: "stun", NumAddrs: 2}}, NATs: nats}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel) // not defer: the parallel subtests run after this returns
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("stun%d", os.Getpid()),
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
	node, _ := lab.Node("stun")
	primary := netip.AddrPortFrom(node.Addrs[0], 3478)
	srv, err := lab.StartAgent(ctx, "stun", []string{"server", primary.String(), node.Addrs[1].String(), "3479"}, natlab.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if line, err := srv.NextLine(ctx); err != nil || line != "ready" {
		t.Fatalf("stun server: %q %v: %s", line, err, srv.Stderr())
	}
	for _, spec := range specs {
		host := spec + "1"
		t.Run(spec, func(t *testing.T) {
			t.Parallel()
			out, err := lab.RunAgent(ctx, host, "classify", primary.String())
			if err != nil {
				t.Fatalf("classify: %v", err)
			}
			var res stun.Result
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("classify output %q: %v", out, err)
			}
			want := natlab.Expected(lab.Nodes, host)
			nat, _ := lab.Node(spec)
			if string(res.Mapping) != string(want.Mapping) || string(res.Filtering) != string(want.Filtering) ||
				res.Mapped.Addr() != nat.Addrs[0] || len(res.Notes) != 0 {
				t.Fatalf("%s: classified %v; lab declares %s, NAT address %s", host, res, want, nat.Addrs[0])
			}
			t.Logf("%s: %v (declared %s)", host, res, strings.TrimSpace(want.String()))
		})
	}
}
