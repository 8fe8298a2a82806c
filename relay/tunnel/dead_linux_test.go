package tunnel

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

const deadChildEnv = "PC2_TUNNEL_DEAD_CHILD"

// TestDeadPeerDetected: when every packet between node and supernode is
// dropped (a silent death: no FIN, no RST, no ICMP), both ends of a TCP
// tunnel and of a QUIC tunnel find out within Idle (15 s) plus a little.
// The tunnels run in a child process in a network namespace of its own,
// where nftables drops all traffic on the loopback once they are up.
func TestDeadPeerDetected(t *testing.T) {
	if os.Getenv(deadChildEnv) == "1" {
		deadPeerChild(t)
		return
	}
	if testing.Short() {
		t.Skip("takes 15 s; not in -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the tunnels in a new network namespace with nftables")
	}
	for _, tool := range []string{"unshare", "nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--net", exe, "-test.run", "^TestDeadPeerDetected$", "-test.v")
	cmd.Env = append(os.Environ(), deadChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
}

func deadPeerChild(t *testing.T) {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v %s", err, out)
	}
	srvKey := newKey(t)
	srv := NewServer(srvKey, ServerConfig{})
	ua, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ta, err := srv.ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	type node struct {
		name string
		key  string
		cli  *Client
	}
	var nodes []node
	for _, tr := range []string{TransportTCP, TransportQUIC} {
		kp := newKey(t)
		addr := ua.String()
		if tr == TransportTCP {
			addr = ta.String()
		}
		cli := NewClient(kp, ClientConfig{Supernode: addr, SupernodeID: srvKey.ID(), Transport: tr, LocalUDP: "127.0.0.1:0",
			BackoffMin: time.Hour}) // no reconnect during the measurement
		if err := cli.Start(); err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		waitFor(t, tr+" tunnel", 5*time.Second, func() bool { return srv.Has(kp.ID()) && cli.Up() })
		nodes = append(nodes, node{tr, kp.ID().String(), cli})
	}
	for _, rule := range [][]string{
		{"add", "table", "inet", "pc2dead"},
		{"add", "chain", "inet", "pc2dead", "in", "{ type filter hook input priority 0; policy drop; }"},
	} {
		if out, err := exec.Command("nft", rule...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v %s", rule, err, out)
		}
	}
	// TCP: keep-alive and TCP_USER_TIMEOUT end it by tcpDeadAfter. QUIC:
	// the supernode's idle timer (Idle) and the node's silence watchdog
	// (closeWhenSilent: Idle-2 s, checked every second) end it by Idle;
	// the slack covers this loop's polling on a loaded machine.
	limits := map[string]time.Duration{TransportTCP: tcpDeadAfter + time.Second, TransportQUIC: Idle + time.Second}
	start := time.Now()
	seen := map[string]time.Duration{}
	for len(seen) < 2*len(nodes) {
		for _, n := range nodes {
			if _, ok := seen[n.name]; !ok && !n.cli.Up() {
				seen[n.name] = time.Since(start)
				fmt.Printf("%s: node saw the tunnel dead after %v\n", n.name, seen[n.name].Round(100*time.Millisecond))
			}
			sn := n.name + " supernode"
			if _, ok := seen[sn]; !ok && srv.LenTransport(n.name) == 0 {
				seen[sn] = time.Since(start)
				limits[sn] = limits[n.name]
				fmt.Printf("%s: supernode dropped the tunnel after %v\n", n.name, seen[sn].Round(100*time.Millisecond))
			}
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("after 30 s, only %v saw the tunnel dead", seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for name, d := range seen {
		if d > limits[name] {
			t.Errorf("%s: dead tunnel found after %v, want at most %v", name, d, limits[name])
		}
	}
}
