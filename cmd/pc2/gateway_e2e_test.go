package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/host"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/testcert"
	"github.com/elacity/pc2/plugins/registry/client"
	"github.com/elacity/pc2/plugins/registry/dhtpub"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// startPC2 runs pc2 with args as a real process and returns its readiness
// Info (sent on PC2_READY_FD, as the devnet receives it). The process is
// stopped with SIGTERM when the test ends, and must exit cleanly.
func startPC2(t *testing.T, args ...string) host.Info {
	t.Helper()
	p := startPC2Proc(t, args...)
	p.cleanExit = true
	return p.info
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func port(t *testing.T, hostport string) string {
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestGatewayEndToEnd(t *testing.T) {
	for _, tool := range []string{"curl", "dig"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (installed by `make deps` as root)", tool)
		}
	}
	// The node's own web services: HTTPS with a certificate only the node
	// holds, and plain HTTP.
	cert, _, err := testcert.New("alice.ela.city")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _ := testcert.PEM(cert)
	caFile := writeFile(t, "alice.pem", string(certPEM))
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer tlsLn.Close()
	go http.Serve(tlsLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "alice over https\n") }))
	httpLn, _ := net.Listen("tcp", "127.0.0.1:0")
	defer httpLn.Close()
	go http.Serve(httpLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "alice over http, host "+r.Host+"\n")
	}))

	super := startPC2(t, "supernode", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "supernode.yaml", `
metrics:
  listen: "off"
registry:
  domains: [ela.city]
`))
	api, sni, plain, dnsAddr := super.Extra["registry.api"], super.Extra["sni.listen"], super.Extra["http.listen"], super.Extra["dns.listen"]
	if api == "" || sni == "" || plain == "" || dnsAddr == "" {
		t.Fatalf("supernode endpoints: %v", super.Extra)
	}

	// A node registers alice.ela.city on start (its "names" section).
	nodeData := t.TempDir()
	startPC2(t, "node", "--dev", "--data", nodeData, "--config", writeFile(t, "node.yaml", fmt.Sprintf(`
metrics:
  listen: "off"
names:
  registry: %s
  names:
    - name: alice.ela.city
      target: %s
      http: %s
`, api, tlsLn.Addr(), httpLn.Addr())))
	waitFor(t, "alice.ela.city registered", 20*time.Second, func() bool {
		resp, err := http.Get(api + "/v1/names/alice.ela.city")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	curl := func(args ...string) (string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "curl", append([]string{"-sS", "--noproxy", "*"}, args...)...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, errb.String())
		}
		return out.String(), errb.String()
	}
	// HTTPS through the SNI passthrough: curl trusts only alice's own
	// certificate, so a successful verified handshake proves the supernode
	// did not terminate TLS (it has no key for alice).
	body, verbose := curl("-v", "--cacert", caFile, "--resolve", "alice.ela.city:"+port(t, sni)+":127.0.0.1", "https://alice.ela.city:"+port(t, sni)+"/")
	if body != "alice over https\n" {
		t.Fatalf("https body %q", body)
	}
	if !strings.Contains(verbose, "subject: CN=alice.ela.city") && !strings.Contains(verbose, "CN=alice.ela.city") {
		t.Errorf("curl did not see alice's certificate:\n%s", verbose)
	}
	// Plain HTTP by Host on the :80 router.
	body, _ = curl("--resolve", "alice.ela.city:"+port(t, plain)+":127.0.0.1", "http://alice.ela.city:"+port(t, plain)+"/")
	if !strings.HasPrefix(body, "alice over http, host alice.ela.city") {
		t.Fatalf("http body %q", body)
	}
	// Authoritative DNS.
	out, err := exec.Command("dig", "@127.0.0.1", "-p", port(t, dnsAddr), "alice.ela.city", "A", "+short", "+time=2", "+tries=2").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "127.0.0.1" {
		t.Fatalf("dig: %v %q", err, out)
	}

	// The name is announced in the DHT: a separate client process finds the
	// supernode-signed record carrying alice's owner proof.
	nameID := dhtpub.NameID("alice.ela.city")
	boot := super.ID.String() + "@" + super.Extra["dht.udp4"]
	var found bool
	var last result
	defer func() {
		if !found {
			t.Logf("last find-peer: code %d\n%s%s", last.code, last.stdout, last.stderr)
		}
	}()
	waitFor(t, "alice.ela.city in the DHT", 20*time.Second, func() bool {
		r := pc2(t, "", "dht", "find-peer", nameID.String(), "--bootstrap", boot, "--json", "--dev")
		last = r
		var peers []struct {
			Node  string `json:"node"`
			Extra struct {
				Record *wire.Record `json:"record"`
			} `json:"extra"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &peers) != nil {
			return false
		}
		for _, p := range peers {
			rec := p.Extra.Record
			found = found || (p.Node == super.ID.String() && rec != nil && rec.Name == "alice.ela.city" && rec.VerifyProof() == nil)
		}
		return found
	})

	// Another key may not take alice.
	r := pc2(t, "", "name", "register", "alice.ela.city", "--target", "127.0.0.1:9", "--registry", api, "--data", newKeyDir(t))
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "taken") && !strings.Contains(r.stdout+r.stderr, "forbidden") && !strings.Contains(r.stdout+r.stderr, "another") {
		t.Fatalf("foreign registration: code %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A captured request replayed is refused.
	kp, _ := identity.Generate(rand.Reader)
	c := &client.Client{BaseURL: api, Key: kp}
	q, err := c.NewRequest(wire.OpRegister, "bob.ela.city")
	if err != nil {
		t.Fatal(err)
	}
	q.Target = "127.0.0.1:9"
	q.Sign(kp)
	ctx := context.Background()
	if _, err := c.Submit(ctx, q); err != nil {
		t.Fatalf("first submission: %v", err)
	}
	if _, err := c.Submit(ctx, q); client.CodeOf(err) != wire.CodeReplay {
		t.Fatalf("replay: %v (code %q), want %q", err, client.CodeOf(err), wire.CodeReplay)
	}
}

func newKeyDir(t *testing.T) string {
	dir := t.TempDir()
	if r := pc2(t, "", "id", "new", "--data", dir); r.code != 0 {
		t.Fatalf("id new: %s", r.stderr)
	}
	return dir
}
