package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestPeerEndToEnd: a supernode (relay, DHT, STUN) and a node that keeps a
// reservation at the supernode's relay, publishes its signed peer record in
// the DHT and answers pc2/echo; `pc2 peer lookup` finds the record and
// `pc2 peer ping` finds the node by id alone, connects through the relay,
// and moves to a direct path while echoing, every echo intact.
func TestPeerEndToEnd(t *testing.T) {
	ports := freePorts(t, 1)
	super := startPC2(t, "supernode", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "super.yaml", fmt.Sprintf(`
metrics:
  listen: "off"
relay:
  admitAll: true
stun:
  listen: 127.0.0.1:%d
`, ports[0])))
	stunAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	dhtBoot := super.ID.String() + "@" + super.Extra["dht.udp4"]
	relay := super.ID.String() + "@" + super.Extra["relay.listen"]
	node := startPC2Proc(t, "node", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "node.yaml", fmt.Sprintf(`
metrics:
  listen: "off"
nat:
  listen: 127.0.0.1:0
  stun: [%s]
  classify: false
dht:
  bootstrap: [%s]
peer:
  relays: [%s]
  echo: true
`, stunAddr, dhtBoot, relay)))
	node.cleanExit = true
	bob := node.info.ID.String()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(node.log)
		if strings.Contains(string(b), "published peer record") && strings.Contains(string(b), "relays=1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node published no record with its relay:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := pc2(t, "", "peer", "lookup", bob, "--dht", dhtBoot)
	if r.code != 0 || !strings.Contains(r.stdout, "relay    "+relay) || !strings.Contains(r.stdout, "udp      127.0.0.1:") {
		t.Fatalf("peer lookup: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = pc2(t, "", "peer", "ping", bob, "--dht", dhtBoot, "--listen", "127.0.0.1:0", "--count", "15", "--interval", "100ms", "--size", "1000")
	t.Logf("pc2 peer ping:\n%s%s", r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("peer ping: exit %d", r.code)
	}
	out := r.stdout
	if !strings.Contains(out, "over relay "+super.Extra["relay.listen"]) {
		t.Errorf("the connection did not start on the supernode's relay")
	}
	if !strings.Contains(out, "path direct ") || !strings.Contains(out, "path=direct") {
		t.Errorf("the connection never went direct")
	}
	if !strings.Contains(out, "15 echoes, 15000 bytes, all intact") {
		t.Errorf("not every echo came back intact")
	}
	// Without the DHT: told which relay holds bob's reservation.
	r = pc2(t, "", "peer", "ping", bob, "--via", relay, "--listen", "127.0.0.1:0", "--count", "3", "--interval", "50ms")
	if r.code != 0 || !strings.Contains(r.stdout, "3 echoes") || !strings.Contains(r.stdout, "over relay") {
		t.Errorf("peer ping --via: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A node that does not exist: a clear error, not a hang.
	r = pc2(t, "", "peer", "ping", "8ERQVdG5xogEFWVcfPoQFX1ynBV5zBwjqqAF2VPSM3xb", "--dht", dhtBoot, "--timeout", "5s", "--listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, "no peer record") {
		t.Errorf("ping to an unknown id: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
