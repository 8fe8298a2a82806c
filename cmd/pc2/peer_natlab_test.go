//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/tools/natlab"
)

// TestPeerNATLab is issue 8's "kill the direct path mid-stream" run, with
// real processes: a supernode (relay, DHT, STUN) on the internet segment,
// bob's `pc2 node` behind a port-restricted NAT (reserved at the relay, its
// record in the DHT, answering pc2/echo) and alice's `pc2 peer ping`
// behind another, echoing 1,000 bytes every 20 ms on one stream, each echo
// checked byte for byte. Once the stream has gone direct, bob's NAT loses
// the direct path for real (its conntrack table flushed and an nftables
// rule dropping every datagram between the two NATs, the relay's traffic
// untouched): the stream must continue through the relay within 3 s with
// no byte lost; when the rule goes, it must return to direct.
func TestPeerNATLab(t *testing.T) {
	needNATLab(t, false, "conntrack")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	prc, err := natlab.ParseNATSpec("prc")
	if err != nil {
		t.Fatal(err)
	}
	topo := natlab.Topology{
		Name:   "peer",
		Public: []natlab.PublicHost{{Name: "super"}},
		NATs: []natlab.NAT{
			{Name: "a", Options: prc, Hosts: []string{"alice"}},
			{Name: "b", Options: prc, Hosts: []string{"bob"}},
		},
	}
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("peer%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	superNode, _ := lab.Node("super")
	superIP := superNode.Addrs[0].String()
	routerA, _ := lab.Node("a")
	aliceWAN := routerA.Addrs[0].String()

	dir := t.TempDir()
	superKey, _ := identity.Generate(rand.Reader)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	start := func(host string, argv ...string) *natlab.Proc {
		t.Helper()
		p, err := lab.Start(ctx, host, append([]string{pc2Bin}, argv...), natlab.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Stop(5 * time.Second)
			if t.Failed() {
				t.Logf("%s %v stderr:\n%s", host, argv[0], tail(p.Stderr(), 40))
			}
		})
		return p
	}
	superCfg := write("super.yaml", fmt.Sprintf(`
identity:
  privateKey: %s
metrics:
  listen: "off"
dht:
  bind4: %[2]s
  port: 39001
relay:
  listen: %[2]s:39004
  admitAll: true
stun:
  listen: %[2]s:3478
`, superKey.Base58(), superIP))
	start("super", "supernode", "--dev", "--data", filepath.Join(dir, "super"), "--config", superCfg)
	dhtBoot := fmt.Sprintf("%s@%s:39001", superKey.ID(), superIP)
	relay := fmt.Sprintf("%s@%s:39004", superKey.ID(), superIP)
	bobKey, _ := identity.Generate(rand.Reader)
	bobCfg := write("bob.yaml", fmt.Sprintf(`
identity:
  privateKey: %s
metrics:
  listen: "off"
nat:
  listen: 0.0.0.0:39010
  stun: [%s:3478]
  classify: false
dht:
  bind4: 0.0.0.0
  bootstrap: [%s]
peer:
  relays: [%s]
  echo: true
`, bobKey.Base58(), superIP, dhtBoot, relay))
	bob := start("bob", "node", "--dev", "--data", filepath.Join(dir, "bob"), "--config", bobCfg)
	// Wait for bob's record, with its relay, in the DHT.
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := lab.Run(ctx, "alice", pc2Bin, "peer", "lookup", bobKey.ID().String(), "--dht", dhtBoot)
		if err == nil && strings.Contains(out, "relay    "+relay) {
			t.Logf("bob's record:\n%s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no record of bob with its relay: %v\n%s\nbob:\n%s", err, out, tail(bob.Stderr(), 30))
		}
		time.Sleep(500 * time.Millisecond)
	}

	alice := start("alice", "peer", "ping", bobKey.ID().String(), "--dht", dhtBoot, "--stun", superIP+":3478",
		"--count", "0", "--interval", "20ms", "--size", "1000", "-v=false")
	waitLine := func(prefix string, limit time.Duration) (string, time.Duration) {
		t.Helper()
		t0 := time.Now()
		lctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		for {
			line, err := alice.NextLine(lctx)
			if err != nil {
				t.Fatalf("alice: waiting %v for %q: %v\nstdout:\n%s\nstderr:\n%s", limit, prefix, err, alice.Stdout(), tail(alice.Stderr(), 30))
			}
			t.Logf("alice: %s", line)
			if strings.HasPrefix(line, prefix) {
				return line, time.Since(t0)
			}
		}
	}
	waitLine("connected to ", 30*time.Second)
	_, up := waitLine("path direct ", 30*time.Second)
	t.Logf("direct %v after connecting through the relay", up)
	time.Sleep(time.Second) // echoes on the direct path (the run is what is measured)

	// Kill the direct path on bob's NAT.
	kill := write("killdirect.nft", fmt.Sprintf("table ip killdirect {\n\tchain drop_direct {\n\t\ttype filter hook forward priority -10; policy accept;\n\t\tip saddr %[1]s drop\n\t\tip daddr %[1]s drop\n\t}\n}\n", aliceWAN))
	if out, err := lab.Run(ctx, "b", "sh", "-c", "nft -f "+kill+" && conntrack -F"); err != nil {
		t.Fatalf("killing the direct path: %v %s", err, out)
	}
	killed := time.Now()
	_, fell := waitLine("path relay ", 10*time.Second)
	t.Logf("direct path killed: alice's stream on the relay after %v", fell)
	if fell > 3*time.Second {
		t.Errorf("fallback took %v, want < 3 s", fell)
	}
	time.Sleep(2 * time.Second) // echoes on the relay
	if out, err := lab.Run(ctx, "b", "nft", "delete", "table", "ip", "killdirect"); err != nil {
		t.Fatalf("restoring the direct path: %v %s", err, out)
	}
	_, back := waitLine("path direct ", 90*time.Second)
	t.Logf("direct path restored: direct again after %v (%v after the kill)", back, time.Since(killed).Round(time.Millisecond))
	time.Sleep(time.Second)
	alice.Stop(10 * time.Second)
	out := alice.Stdout()
	if !strings.Contains(out, "all intact") {
		t.Fatalf("alice's echoes were not all intact:\n%s\n%s", tail(out, 10), tail(alice.Stderr(), 20))
	}
	summary := strings.TrimSpace(tail(out, 1))
	t.Logf("alice: %s", summary)
	// The longest echo spans the kill: detection plus QUIC's next
	// retransmission, which goes through the relay.
	m := regexp.MustCompile(`max ([0-9.]+[µmn]?s);`).FindStringSubmatch(summary)
	if m == nil {
		t.Fatalf("no max rtt in %q", summary)
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d > 3*time.Second {
		t.Errorf("the stream stalled %v (%v) across the fallback, want < 3 s", d, err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
