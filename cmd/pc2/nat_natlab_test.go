package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/tools/natlab"
)

// TestNATServiceNATLab is the node side in the NAT lab: a supernode with
// the stun service on two addresses and two ports, and a node behind a
// port-restricted router that runs miniupnpd. At start the node logs its
// reflexive address with the router's public address, its class
// (EIM/APDF) and a port mapping of its shared socket; the mapping is in the
// router's miniupnpd table while the node runs and gone after it stops.
func TestNATServiceNATLab(t *testing.T) {
	needNATLab(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts, err := natlab.ParseNATSpec("prc,upnp")
	if err != nil {
		t.Fatal(err)
	}
	topo := natlab.Topology{
		Name:   "natsvc",
		Public: []natlab.PublicHost{{Name: "probe", ProbeServer: true}, {Name: "super", NumAddrs: 2}},
		NATs:   []natlab.NAT{{Name: "home", Options: opts, Hosts: []string{"alice"}}},
	}
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("natsvc%d", os.Getpid()),
		Launcher: natlab.Launcher{Path: pc2Bin, Args: []string{"natlab", "agent"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	super, _ := lab.Node("super")
	home, _ := lab.Node("home")
	dir := t.TempDir()
	kp, _ := identity.Generate(rand.Reader)
	superCfg := filepath.Join(dir, "super.yaml")
	os.WriteFile(superCfg, []byte(fmt.Sprintf(`
identity:
  privateKey: %s
metrics:
  listen: "off"
stun:
  listen: %s:3478
  otherPort: 3479
  otherAddr: %s
`, kp.Base58(), super.Addrs[0], super.Addrs[1])), 0o600)
	sp, err := lab.Start(ctx, "super", []string{pc2Bin, "supernode", "--dev", "--data", filepath.Join(dir, "super"), "--config", superCfg}, natlab.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Stop(5 * time.Second)
	waitLog(t, sp, "stun server ready")

	nodeCfg := filepath.Join(dir, "alice.yaml")
	os.WriteFile(nodeCfg, []byte(fmt.Sprintf(`
metrics:
  listen: "off"
nat:
  listen: 0.0.0.0:39010
  stun: [%s:3478]
  portMapping: true
`, super.Addrs[0])), 0o600)
	np, err := lab.Start(ctx, "alice", []string{pc2Bin, "node", "--dev", "--data", filepath.Join(dir, "alice"), "--config", nodeCfg}, natlab.StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer np.Stop(5 * time.Second)
	waitLog(t, np, "reflexive address", "udp="+home.Addrs[0].String()+":", "mapping=EIM", "filtering=APDF")
	waitLog(t, np, "port mapped", "external="+home.Addrs[0].String()+":39010")

	table := func() string {
		out, err := lab.Run(ctx, "home", "nft", "list", "table", "inet", "miniupnpd")
		if err != nil {
			t.Fatalf("nft: %v", err)
		}
		return out
	}
	// `pc2 nat map` on another port: granted, printed, deleted.
	out, err := lab.Run(ctx, "alice", pc2Bin, "nat", "map", "--port", "40100", "--json")
	if err != nil {
		t.Fatalf("pc2 nat map: %v", err)
	}
	var m struct{ Protocol, External string }
	if err := json.Unmarshal([]byte(out), &m); err != nil || m.External != home.Addrs[0].String()+":40100" {
		t.Fatalf("pc2 nat map printed %q (%v)", out, err)
	}
	if tb := table(); strings.Contains(tb, "40100") {
		t.Fatalf("pc2 nat map left its mapping:\n%s", tb)
	}
	if !strings.Contains(table(), "39010") {
		t.Fatalf("mapping not in the router's table:\n%s", table())
	}
	np.Stop(10 * time.Second)
	if err := np.Wait(ctx); err != nil {
		t.Errorf("node exit: %v\n%s", err, np.Stderr())
	}
	if out := table(); strings.Contains(out, "39010") {
		t.Fatalf("mapping left in the router's table after the node stopped:\n%s", out)
	}
}

// waitLog waits until one line of p's log contains every part.
func waitLog(t *testing.T, p *natlab.Proc, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, line := range strings.Split(p.Stderr()+p.Stdout(), "\n") {
			ok := true
			for _, part := range parts {
				ok = ok && strings.Contains(line, part)
			}
			if ok {
				t.Logf("%s: %s", p.Host, line)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q:\n%s%s", parts, p.Stdout(), p.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
