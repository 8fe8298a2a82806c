package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/elacity/pc2/core/identity"
	fedmesh "github.com/elacity/pc2/federation/mesh"
	"github.com/elacity/pc2/gateway/testcert"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// fedSuper is one supernode of a federation test: fixed key and ports,
// so that it can be killed and restarted as the same supernode.
type fedSuper struct {
	name                             string
	key                              *identity.KeyPair
	registry, sni, tunnel, mesh, dns string
	addr                             string // its "public" address in DNS answers
	cfg, data                        string
	proc                             *pc2Proc
}

func (s *fedSuper) start(t *testing.T) {
	s.proc = startPC2Proc(t, "supernode", "--dev", "--data", s.data, "--config", s.cfg)
	s.proc.cleanExit = true // a data race (exit 66) or an unclean stop fails the test
}

// tlsServer serves body over TLS with a certificate for name.
func tlsServer(t *testing.T, name, body string) (addr string, caFile string) {
	t.Helper()
	cert, _, err := testcert.New(name)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _ := testcert.PEM(cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) }))
	return ln.Addr().String(), writeFile(t, name+".pem", string(certPEM))
}

// curlVia fetches https://name/ through the SNI gateway at sni.
func curlVia(sni, name, caFile string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	host, p, _ := net.SplitHostPort(sni)
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--noproxy", "*", "--cacert", caFile,
		"--resolve", name+":"+p+":"+host, "https://"+name+":"+p+"/").Output()
	return string(out), err
}

// dnsA asks the DNS server at server for name's A records.
func dnsA(server, name string) ([]string, error) {
	m := new(mdns.Msg).SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	c := &mdns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
			if a.Hdr.Ttl > 10 {
				return nil, fmt.Errorf("TTL %d, want a short one", a.Hdr.Ttl)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// newFederation writes the configs of n supernodes that know each other.
func newFederation(t *testing.T, n int) []*fedSuper {
	ports := freePorts(t, 5*n)
	supers := make([]*fedSuper, n)
	for i := range supers {
		key, _ := identity.Generate(rand.Reader)
		p := ports[5*i:]
		supers[i] = &fedSuper{
			name: string(rune('A' + i)), key: key,
			registry: fmt.Sprintf("127.0.0.1:%d", p[0]), sni: fmt.Sprintf("127.0.0.1:%d", p[1]),
			tunnel: fmt.Sprintf("127.0.0.1:%d", p[2]), mesh: fmt.Sprintf("127.0.0.1:%d", p[3]),
			dns: fmt.Sprintf("127.0.0.1:%d", p[4]), addr: fmt.Sprintf("192.0.2.%d", 11+i),
			data: t.TempDir(),
		}
	}
	for _, s := range supers {
		var peers strings.Builder
		for _, o := range supers {
			if o != s {
				fmt.Fprintf(&peers, "    - {id: %s, addr: %q}\n", o.key.ID(), o.mesh)
			}
		}
		s.cfg = writeFile(t, "super"+s.name+".yaml", fmt.Sprintf(`
identity:
  privateKey: %s
metrics:
  listen: "off"
registry:
  listen: %s
  domains: [ela.city]
sni:
  listen: %s
tunnel:
  listen: %s
dns:
  listen: %s
mesh:
  listen: %s
  addresses: [%s]
  peers:
%s`, s.key.Base58(), s.registry, s.sni, s.tunnel, s.dns, s.mesh, s.addr, peers.String()))
	}
	return supers
}

// TestFederationEndToEnd: three supernodes on loopback, two nodes each
// holding tunnels to A and B. Names registered at A are served through
// A, B and C (C forwards over the mesh); DNS at every supernode answers
// with the live ones only; kill -9 of A is noticed within 10 s, the
// nodes stay served through B and C and no registration is lost; A
// rejoins by itself; a name claimed at A and B at the same moment ends
// with one owner, the one the documented rule picks, everywhere.
func TestFederationEndToEnd(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (installed by `make deps` as root)")
	}
	supers := newFederation(t, 3)
	A, B, C := supers[0], supers[1], supers[2]
	for _, s := range supers {
		s.start(t)
	}
	all := []string{A.addr, B.addr, C.addr}

	ca := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		addr, caFile := tlsServer(t, name+".ela.city", name+" via the federation\n")
		ca[name] = caFile
		startPC2(t, "node", "--dev", "--data", t.TempDir(), "--config", writeFile(t, name+".yaml", fmt.Sprintf(`
metrics:
  listen: "off"
names:
  registry: http://%s
  retryMin: 1s
  names:
    - name: %s.ela.city
      target: 127.0.0.1:9
tunnel-client:
  supernodes:
    - {addr: %q, id: %s}
    - {addr: %q, id: %s}
  services:
    - name: https
      addr: %s
`, A.registry, name, A.tunnel, A.key.ID(), B.tunnel, B.key.ID(), addr)))
	}
	servedVia := func(s *fedSuper, name string) bool {
		body, err := curlVia(s.sni, name+".ela.city", ca[name])
		return err == nil && body == name+" via the federation\n"
	}
	everywhere := func(ss ...*fedSuper) func() bool {
		return func() bool {
			for _, s := range ss {
				if !servedVia(s, "alice") || !servedVia(s, "bob") {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "alice and bob (registered at A) served through A, B and C", 30*time.Second, everywhere(A, B, C))
	for _, s := range supers {
		waitFor(t, "DNS at "+s.name+" answers with A, B and C", 10*time.Second, func() bool {
			got, err := dnsA(s.dns, "alice.ela.city")
			return err == nil && slices.Equal(got, all)
		})
	}
	st := pc2(t, "", "supernode", "status", "--data", C.data)
	if st.code != 0 || strings.Count(st.stdout, "alive") != 2 {
		t.Fatalf("pc2 supernode status at C: %d\n%s%s", st.code, st.stdout, st.stderr)
	}
	t.Logf("pc2 supernode status at C:\n%s", st.stdout)

	// kill -9 A: B and C notice within 10 s and stop answering with it.
	A.proc.kill9()
	killed := time.Now()
	for _, s := range []*fedSuper{B, C} {
		waitFor(t, "DNS at "+s.name+" drops A", 10*time.Second-time.Since(killed), func() bool {
			got, err := dnsA(s.dns, "alice.ela.city")
			return err == nil && slices.Equal(got, []string{B.addr, C.addr})
		})
	}
	noticed := time.Since(killed)
	waitFor(t, "alice and bob served through B and C without A", 10*time.Second, everywhere(B, C))
	t.Logf("A's death noticed by B and C (DNS without A) %v after kill -9", noticed.Round(time.Millisecond))

	// A comes back on its own and rejoins; DNS answers with it again.
	A.start(t)
	for _, s := range supers {
		waitFor(t, "DNS at "+s.name+" answers with A again", 15*time.Second, func() bool {
			got, err := dnsA(s.dns, "bob.ela.city")
			return err == nil && slices.Equal(got, all)
		})
	}
	waitFor(t, "served through A, B and C after A rejoined", 30*time.Second, everywhere(A, B, C))

	// A name claimed at A and B at the same moment by two owners.
	keys := [2]*identity.KeyPair{}
	recs := [2]*wire.Record{}
	errs := [2]error{}
	addrs, cas := [2]string{}, [2]string{}
	for i := range keys {
		keys[i], _ = identity.Generate(rand.Reader)
		addrs[i], cas[i] = tlsServer(t, "carol.ela.city", fmt.Sprintf("carol of owner %d\n", i))
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range []*fedSuper{A, B} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &client.Client{BaseURL: "http://" + s.registry, Key: keys[i]}
			<-start
			recs[i], errs[i] = cl.Register(context.Background(), client.Registration{Name: "carol.ela.city", Target: addrs[i]})
		}()
	}
	close(start)
	wg.Wait()
	winner := 0
	switch {
	case errs[0] == nil && errs[1] == nil:
		if fedmesh.Better(recs[1], recs[0]) {
			winner = 1
		}
		t.Logf("both claims accepted (created %d and %d); the rule picks owner %d", recs[0].Created, recs[1].Created, winner)
	case errs[0] == nil:
		t.Logf("B refused the later claim at once: %v", errs[1])
	case errs[1] == nil:
		winner = 1
		t.Logf("A refused the later claim at once: %v", errs[0])
	default:
		t.Fatalf("both claims refused: %v, %v", errs[0], errs[1])
	}
	want := fmt.Sprintf("carol of owner %d\n", winner)
	for _, s := range supers {
		waitFor(t, "carol routed to the winner at "+s.name, 10*time.Second, func() bool {
			body, err := curlVia(s.sni, "carol.ela.city", cas[winner])
			return err == nil && body == want
		})
	}
	// The loser is told: its supernode no longer has its claim and
	// refuses it as taken.
	loserAt := []*fedSuper{A, B}[1-winner]
	cl := &client.Client{BaseURL: "http://" + loserAt.registry, Key: keys[1-winner]}
	if _, err := cl.Register(context.Background(), client.Registration{Name: "carol.ela.city", Target: addrs[1-winner]}); client.CodeOf(err) != wire.CodeTaken {
		t.Errorf("the loser registering again at %s: %v, want taken", loserAt.name, err)
	}
}
