package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/testcert"
	"github.com/elacity/pc2/tools/natlab"
)

// TestTunnelNATLab is the NAT lab run: a supernode on the internet
// segment, alice behind a port-restricted NAT and bob behind a symmetric
// NAT, each serving HTTPS with its own certificate only through its
// tunnel; curl on a third internet host gets both pages through the SNI
// gateway and sees each node's own certificate; after kill -9 and restart
// of the supernode both are served again.
func TestTunnelNATLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (NAT lab)")
	}
	if err := natlab.CheckDeps(false); err != nil {
		t.Skipf("NAT lab dependencies missing (pc2 natlab install-deps): %v", err)
	}
	for _, tool := range []string{"curl", "openssl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	ctx := context.Background()
	prc, err := natlab.ParseNATSpec("prc")
	if err != nil {
		t.Fatal(err)
	}
	sym, err := natlab.ParseNATSpec("sym")
	if err != nil {
		t.Fatal(err)
	}
	topo := natlab.Topology{
		Name:   "tunnel",
		Public: []natlab.PublicHost{{Name: "super"}, {Name: "visitor"}},
		NATs: []natlab.NAT{
			{Name: "a", Options: prc, Hosts: []string{"alice"}},
			{Name: "b", Options: sym, Hosts: []string{"bob"}},
		},
	}
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("tun%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	superNode, _ := lab.Node("super")
	superIP := superNode.Addrs[0].String()

	dir := t.TempDir()
	superKey, _ := identity.Generate(rand.Reader)
	superCfg := filepath.Join(dir, "super.yaml")
	os.WriteFile(superCfg, []byte(fmt.Sprintf(`
identity:
  privateKey: %s
metrics:
  listen: "off"
registry:
  listen: %s:39002
  domains: [ela.city]
sni:
  listen: %s:8443
tunnel:
  listen: %s:8090
`, superKey.Base58(), superIP, superIP, superIP)), 0o600)
	superData := filepath.Join(dir, "super")
	startSuper := func() *natlab.Proc {
		p, err := lab.Start(ctx, "super", []string{pc2Bin, "supernode", "--dev", "--data", superData, "--config", superCfg}, natlab.StartOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	super := startSuper()

	// Each node: an HTTPS server with its own certificate on loopback, and
	// pc2 node registering its name with a dead target, tunnelled.
	caFiles := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		cert, _, err := testcert.New(name + ".ela.city")
		if err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM, err := testcert.PEM(cert)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		os.WriteFile(certFile, certPEM, 0o600)
		os.WriteFile(keyFile, keyPEM, 0o600)
		caFiles[name] = certFile
		if _, err := lab.Start(ctx, name, []string{"openssl", "s_server", "-quiet", "-accept", "127.0.0.1:4200", "-cert", certFile, "-key", keyFile, "-www"}, natlab.StartOptions{}); err != nil {
			t.Fatal(err)
		}
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
  supernode: %s:8090
  supernodeID: %s
  services:
    - name: https
      addr: 127.0.0.1:4200
`, superIP, name, superIP, superKey.ID())), 0o600)
		if _, err := lab.Start(ctx, name, []string{pc2Bin, "node", "--dev", "--data", filepath.Join(dir, name), "--config", nodeCfg}, natlab.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	served := func(name string) bool {
		out, err := lab.Run(ctx, "visitor", "curl", "-sS", "-v", "--max-time", "3", "--noproxy", "*",
			"--cacert", caFiles[name], "--resolve", name+".ela.city:8443:"+superIP, "https://"+name+".ela.city:8443/")
		if err != nil {
			if ee, ok := err.(*natlab.ExitError); ok && !strings.Contains(ee.Stderr, "CN="+name+".ela.city") && strings.Contains(ee.Stderr, "SSL certificate") {
				t.Logf("%s: wrong certificate: %s", name, ee.Stderr)
			}
			return false
		}
		return strings.Contains(out, "s_server") // openssl's -www status page
	}
	both := func() bool { return served("alice") && served("bob") }
	waitFor(t, "alice (port-restricted NAT) and bob (symmetric NAT) served through their tunnels", 60*time.Second, both)

	var took []time.Duration
	for i := range 3 {
		time.Sleep(time.Second) // scenario: idle tunnels
		syscall.Kill(super.Pid(), syscall.SIGKILL)
		<-super.Done()
		super = startSuper()
		start := time.Now() // includes the supernode's start-up
		waitFor(t, fmt.Sprintf("both served after restart %d", i+1), 10*time.Second, both)
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	t.Logf("NAT lab: both nodes served again after kill -9 + restart (from process start, incl. its start-up): %v", took)
	super.Stop(5 * time.Second)
}
