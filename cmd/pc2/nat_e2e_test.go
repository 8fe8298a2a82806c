package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/transport/stun"
)

// TestNATEndToEnd: a supernode's stun service on two loopback addresses
// and two ports answers `pc2 nat probe` (full RFC 5780 classification: no
// NAT on loopback) and a node's "nat" section, which logs its reflexive
// address at start.
func TestNATEndToEnd(t *testing.T) {
	ports := freePorts(t, 2)
	super := startPC2(t, "supernode", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "supernode.yaml", fmt.Sprintf(`
stun:
  listen: 127.0.0.1:%d
  otherPort: %d
  otherAddr: 127.0.0.2
`, ports[0], ports[1])))
	_ = super
	server := fmt.Sprintf("127.0.0.1:%d", ports[0])

	r := pc2(t, "", "nat", "probe", "--server", server, "--json", "--rto", "100ms")
	if r.code != 0 {
		t.Fatalf("nat probe: exit %d: %s", r.code, r.stderr)
	}
	var res stun.Result
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("nat probe output %q: %v", r.stdout, err)
	}
	if res.Mapping != stun.NoNAT || res.Filtering != stun.EIF || res.Other.String() != fmt.Sprintf("127.0.0.2:%d", ports[1]) {
		t.Fatalf("nat probe: %v", res)
	}
	r = pc2(t, "", "nat", "probe", "--server", server)
	if r.code != 0 || !strings.Contains(r.stdout, "mapping    none") || !strings.Contains(r.stdout, "filtering  EIF") {
		t.Fatalf("nat probe (text): exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	node := startPC2Proc(t, "node", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "node.yaml", fmt.Sprintf(`
nat:
  stun: [%s]
`, server)))
	node.cleanExit = true
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(node.log)
		if strings.Contains(string(b), "reflexive address") && strings.Contains(string(b), "mapping=none") &&
			strings.Contains(string(b), "filtering=EIF") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node logged no reflexive address:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if u, err := netip.ParseAddrPort(node.info.Extra["nat.udp"]); err != nil || u.Port() == 0 {
		t.Errorf("node advertises shared socket %q (extra %v)", u, node.info.Extra)
	}
}
