package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/testcert"
	"github.com/elacity/pc2/tools/natlab"
)

// TestFederationNATLab is the federation issue's NAT lab run: three
// supernodes A, B, C on the internet segment, alice behind a
// port-restricted NAT and bob behind a symmetric NAT, each holding
// tunnels to A and B and registered at A. C knows A and B by id only and
// finds their mesh endpoints in the DHT. Names registered at A resolve
// (DNS at B and C) and serve (SNI at B and C) everywhere; after kill -9
// of A, DNS at B and C stops answering with A within 10 s, both nodes
// are served through B (and C), no registration is lost; A, restarted,
// rejoins by itself; a name claimed at A and B at the same moment ends
// with one owner on every supernode, and the loser is refused.
func TestFederationNATLab(t *testing.T) {
	needNATLab(t, false, "curl", "openssl", "dig")
	ctx := context.Background()
	prc, _ := natlab.ParseNATSpec("prc")
	sym, _ := natlab.ParseNATSpec("sym")
	topo := natlab.Topology{
		Name:   "fed",
		Public: []natlab.PublicHost{{Name: "sa"}, {Name: "sb"}, {Name: "sc"}, {Name: "visitor"}},
		NATs: []natlab.NAT{
			{Name: "a", Options: prc, Hosts: []string{"alice"}},
			{Name: "b", Options: sym, Hosts: []string{"bob"}},
		},
	}
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("fed%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	dir := t.TempDir()

	type super struct {
		host, ip string
		key      *identity.KeyPair
		cfg      string
		proc     *natlab.Proc
	}
	supers := []*super{{host: "sa"}, {host: "sb"}, {host: "sc"}}
	for _, s := range supers {
		n, _ := lab.Node(s.host)
		s.ip = n.Addrs[0].String()
		s.key, _ = identity.Generate(rand.Reader)
	}
	A, B, C := supers[0], supers[1], supers[2]
	for i, s := range supers {
		var peers strings.Builder
		for _, o := range supers {
			switch {
			case o == s:
			case s == C: // C learns A's and B's mesh endpoints from the DHT
				fmt.Fprintf(&peers, "    - {id: %s}\n", o.key.ID())
			default:
				fmt.Fprintf(&peers, "    - {id: %s, addr: \"%s:39003\"}\n", o.key.ID(), o.ip)
			}
		}
		boot := supers[(i+1)%len(supers)]
		s.cfg = filepath.Join(dir, s.host+".yaml")
		os.WriteFile(s.cfg, []byte(fmt.Sprintf(`
identity:
  privateKey: %[1]s
metrics:
  listen: "off"
dht:
  port: 39001
  bind4: %[2]s
  bind6: "off"
  bootstrap: ["%[3]s@%[4]s:39001"]
registry:
  listen: %[2]s:39002
  domains: [ela.city]
sni:
  listen: %[2]s:8443
tunnel:
  listen: %[2]s:8090
dns:
  listen: %[2]s:53
  addresses: [%[2]s]
mesh:
  listen: %[2]s:39003
  addresses: [%[2]s]
  announceInterval: 1s
  peers:
%[5]s`, s.key.Base58(), s.ip, boot.key.ID(), boot.ip, peers.String())), 0o600)
	}
	start := func(s *super) {
		p, err := lab.Start(ctx, s.host, []string{pc2Bin, "supernode", "--dev", "--data", filepath.Join(dir, s.host), "--config", s.cfg}, natlab.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.proc = p
	}
	for _, s := range supers {
		start(s)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range supers {
				t.Logf("%s log:\n%s", s.host, s.proc.Stderr())
			}
		}
	})

	// certificate files, by name
	pem := func(name string) (certFile, keyFile string) {
		cert, _, err := testcert.New(name)
		if err != nil {
			t.Fatal(err)
		}
		c, k, err := testcert.PEM(cert)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Join(dir, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
		os.WriteFile(base+".pem", c, 0o600)
		os.WriteFile(base+".key", k, 0o600)
		return base + ".pem", base + ".key"
	}
	serve := func(host, addr, name string) string {
		certFile, keyFile := pem(name)
		if _, err := lab.Start(ctx, host, []string{"openssl", "s_server", "-quiet", "-accept", addr, "-cert", certFile, "-key", keyFile, "-www"}, natlab.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		return certFile
	}
	caFiles := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		caFiles[name] = serve(name, "127.0.0.1:4200", name+".ela.city")
		nodeCfg := filepath.Join(dir, name+".yaml")
		os.WriteFile(nodeCfg, []byte(fmt.Sprintf(`
metrics:
  listen: "off"
names:
  registry: http://%s:39002
  retryMin: 1s
  names:
    - name: %s.ela.city
      target: 127.0.0.1:9
tunnel-client:
  supernodes:
    - {addr: "%s:8090", id: %s}
    - {addr: "%s:8090", id: %s}
  services:
    - name: https
      addr: 127.0.0.1:4200
`, A.ip, name, A.ip, A.key.ID(), B.ip, B.key.ID())), 0o600)
		if _, err := lab.Start(ctx, name, []string{pc2Bin, "node", "--dev", "--data", filepath.Join(dir, name), "--config", nodeCfg}, natlab.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	servedVia := func(s *super, name, caFile string) bool {
		out, err := lab.Run(ctx, "visitor", "curl", "-sS", "--max-time", "3", "--noproxy", "*",
			"--cacert", caFile, "--resolve", name+":8443:"+s.ip, "https://"+name+":8443/")
		return err == nil && strings.Contains(out, "s_server") // openssl's -www status page
	}
	both := func(ss ...*super) func() bool {
		return func() bool {
			for _, s := range ss {
				if !servedVia(s, "alice.ela.city", caFiles["alice"]) || !servedVia(s, "bob.ela.city", caFiles["bob"]) {
					return false
				}
			}
			return true
		}
	}
	dig := func(s *super, name string) []string {
		out, err := lab.Run(ctx, "visitor", "dig", "+short", "+time=2", "+tries=1", "@"+s.ip, name, "A")
		if err != nil {
			return nil
		}
		f := strings.Fields(out)
		slices.Sort(f)
		return f
	}
	ips := func(ss ...*super) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.ip)
		}
		slices.Sort(out)
		return out
	}

	waitFor(t, "alice (prc NAT) and bob (sym NAT), registered at A, served through A, B and C", 90*time.Second, both(A, B, C))
	for _, s := range []*super{B, C} {
		waitFor(t, "DNS at "+s.host+" answers with A, B and C", 20*time.Second, func() bool {
			return slices.Equal(dig(s, "alice.ela.city"), ips(A, B, C)) && slices.Equal(dig(s, "bob.ela.city"), ips(A, B, C))
		})
	}
	status, err := lab.Run(ctx, "sc", pc2Bin, "supernode", "status", "--data", filepath.Join(dir, "sc"))
	if err != nil || strings.Count(status, " alive ") != 2 {
		t.Fatalf("pc2 supernode status at C: %v\n%s", err, status)
	}
	// C was given A's and B's ids only: their mesh endpoints came from
	// their announcements in the DHT.
	for _, s := range []*super{A, B} {
		if !strings.Contains(status, s.ip+":39003") {
			t.Errorf("C did not learn %s's mesh endpoint from the DHT", s.host)
		}
	}
	t.Logf("pc2 supernode status at C:\n%s", status)

	// kill -9 A.
	syscall.Kill(A.proc.Pid(), syscall.SIGKILL)
	<-A.proc.Done()
	killed := time.Now()
	for _, s := range []*super{B, C} {
		waitFor(t, "DNS at "+s.host+" stops answering with A", 10*time.Second-time.Since(killed), func() bool {
			return slices.Equal(dig(s, "alice.ela.city"), ips(B, C))
		})
	}
	noticed := time.Since(killed)
	waitFor(t, "both nodes served through B and C without A", 10*time.Second, both(B, C))
	servedAfter := time.Since(killed)
	t.Logf("after kill -9 of A: DNS at B and C without A after %v, both nodes served through B and C after %v",
		noticed.Round(time.Millisecond), servedAfter.Round(time.Millisecond))

	// A restarts with the same data and rejoins by itself.
	start(A)
	restarted := time.Now()
	for _, s := range []*super{B, C} {
		waitFor(t, "DNS at "+s.host+" answers with A again", 20*time.Second, func() bool {
			return slices.Equal(dig(s, "bob.ela.city"), ips(A, B, C))
		})
	}
	waitFor(t, "both nodes served through A, B and C after A rejoined", 30*time.Second, both(A, B, C))
	t.Logf("A rejoined and serves both nodes %v after its restart", time.Since(restarted).Round(time.Millisecond))

	// carol claimed at A and B at the same moment by two owners, each
	// with its own server (and certificate) on the visitor host.
	visitor, _ := lab.Node("visitor")
	vip := visitor.Addrs[0].String()
	var claim [2]struct {
		data, ca, target, out string
		err                   error
	}
	for i := range claim {
		claim[i].data = filepath.Join(dir, fmt.Sprintf("carol%d", i))
		if r := pc2(t, "", "id", "new", "--data", claim[i].data); r.code != 0 {
			t.Fatalf("id new: %s", r.stderr)
		}
		claim[i].target = fmt.Sprintf("%s:%d", vip, 4401+i)
		claim[i].ca = serve("visitor", claim[i].target, "carol.ela.city")
	}
	var wg sync.WaitGroup
	for i, s := range []*super{A, B} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			claim[i].out, claim[i].err = lab.Run(ctx, "visitor", pc2Bin, "name", "register", "carol.ela.city",
				"--data", claim[i].data, "--registry", "http://"+s.ip+":39002", "--target", claim[i].target)
		}()
	}
	wg.Wait()
	t.Logf("claim at A: %q %v; claim at B: %q %v", claim[0].out, claim[0].err, claim[1].out, claim[1].err)
	winner := -1
	waitFor(t, "carol served by one owner through A, B and C", 15*time.Second, func() bool {
		for i := range claim {
			if servedVia(A, "carol.ela.city", claim[i].ca) && servedVia(B, "carol.ela.city", claim[i].ca) && servedVia(C, "carol.ela.city", claim[i].ca) {
				winner = i
				return true
			}
		}
		return false
	})
	loser := 1 - winner
	for _, s := range supers {
		if servedVia(s, "carol.ela.city", claim[loser].ca) {
			t.Errorf("%s still routes carol to the losing claim", s.host)
		}
	}
	_, err = lab.Run(ctx, "visitor", pc2Bin, "name", "register", "carol.ela.city",
		"--data", claim[loser].data, "--registry", "http://"+[]*super{A, B}[loser].ip+":39002", "--target", claim[loser].target)
	if ee, ok := err.(*natlab.ExitError); !ok || !strings.Contains(ee.Stderr, "taken") {
		t.Errorf("the losing owner registering again: %v, want taken", err)
	}
	t.Logf("carol: claim %d (at %s) won everywhere", winner, []string{"A", "B"}[winner])

	// dave claimed at A and at B while the two cannot reach each other
	// (a blackhole route on A): both accept, since neither knows the
	// other's claim, the widest form of "at the same moment". Once the
	// link is back, both converge on the claim the rule picks.
	var dave [2]struct{ ca, target string }
	for i := range dave {
		dave[i].target = fmt.Sprintf("%s:%d", vip, 4403+i)
		dave[i].ca = serve("visitor", dave[i].target, "dave.ela.city")
	}
	if _, err := lab.Run(ctx, "sa", "ip", "route", "add", "blackhole", B.ip+"/32"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A and B see each other dead", 15*time.Second, func() bool {
		out, _ := lab.Run(ctx, "sa", pc2Bin, "supernode", "status", "--data", filepath.Join(dir, "sa"))
		return strings.Count(out, " alive ") == 1
	})
	for i, s := range []*super{A, B} {
		out, err := lab.Run(ctx, "visitor", pc2Bin, "name", "register", "dave.ela.city",
			"--data", claim[i].data, "--registry", "http://"+s.ip+":39002", "--target", dave[i].target)
		if err != nil {
			t.Fatalf("dave at %s during the partition: %v", s.host, err)
		}
		t.Logf("dave accepted at %s: %s", s.host, strings.TrimSpace(out))
	}
	if _, err := lab.Run(ctx, "sa", "ip", "route", "del", "blackhole", B.ip+"/32"); err != nil {
		t.Fatal(err)
	}
	daveWinner := -1
	waitFor(t, "dave converges on one owner at A, B and C", 20*time.Second, func() bool {
		for i := range dave {
			if servedVia(A, "dave.ela.city", dave[i].ca) && servedVia(B, "dave.ela.city", dave[i].ca) && servedVia(C, "dave.ela.city", dave[i].ca) {
				daveWinner = i
				return true
			}
		}
		return false
	})
	// The loser's supernode evicted the losing claim and tells its owner.
	loserAt := []*super{A, B}[1-daveWinner]
	_, err = lab.Run(ctx, "visitor", pc2Bin, "name", "register", "dave.ela.city",
		"--data", claim[1-daveWinner].data, "--registry", "http://"+loserAt.ip+":39002", "--target", dave[1-daveWinner].target)
	if ee, ok := err.(*natlab.ExitError); !ok || !strings.Contains(ee.Stderr, "taken") {
		t.Errorf("the losing owner of dave registering again at %s: %v, want taken", loserAt.host, err)
	}
	winnerAt := []*super{A, B}[daveWinner]
	show, err := lab.Run(ctx, "visitor", pc2Bin, "name", "show", "dave.ela.city", "--registry", "http://"+winnerAt.ip+":39002")
	if err != nil {
		t.Fatalf("dave at the winner's supernode: %v", err)
	}
	t.Logf("dave after the partition healed: the claim at %s won everywhere (%s)", winnerAt.host, strings.TrimSpace(strings.ReplaceAll(show, "\n", "; ")))
	for _, s := range supers {
		s.proc.Stop(5 * time.Second)
	}
}
