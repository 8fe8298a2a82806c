//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/gateway/proxyproto"
	"github.com/elacity/pc2/gateway/testcert"
	"github.com/elacity/pc2/tools/natlab"
)

// TestTunnelNATLab is the NAT lab run: a supernode on the internet
// segment, alice behind a port-restricted NAT and bob behind a symmetric
// NAT, each serving HTTPS with its own certificate only through its
// tunnel; curl on a third internet host gets both pages through the SNI
// gateway and sees each node's own certificate; alice's service gets the
// visitor's real address (the third host's) in a PROXY v2 header from her
// node; after kill -9 and restart of the supernode (20 times) both are
// served again, p95 within 2 s of the new supernode listening.
func TestTunnelNATLab(t *testing.T) {
	needNATLab(t, false, "curl", "openssl")
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
	// pc2 node registering its name with the target "tunnel". Alice's is
	// this test's own server, listening inside alice's namespace, which
	// expects the PROXY v2 header her node sends and answers with the
	// visitor address it read there; bob's is openssl s_server.
	visitorNode, _ := lab.Node("visitor")
	visitorIP := visitorNode.Addrs[0].String()
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
		proxyProtocol := name == "alice"
		if proxyProtocol {
			ln, err := listenInNetns(lab.NS(name), "127.0.0.1:4200")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go serveProxyHTTPS(ln, cert)
		} else if _, err := lab.Start(ctx, name, []string{"openssl", "s_server", "-quiet", "-accept", "127.0.0.1:4200", "-cert", certFile, "-key", keyFile, "-www"}, natlab.StartOptions{}); err != nil {
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
      target: tunnel
tunnel-client:
  supernode: %s:8090
  supernodeID: %s
  services:
    - name: https
      addr: 127.0.0.1:4200
      proxyProtocol: %v
`, superIP, name, superIP, superKey.ID(), proxyProtocol)), 0o600)
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
		if name == "alice" { // the address in the PROXY v2 header alice's service got
			return strings.Contains(out, "visitor="+visitorIP+":")
		}
		return strings.Contains(out, "s_server") // openssl's -www status page
	}
	both := func() bool { return served("alice") && served("bob") }
	waitFor(t, "alice (port-restricted NAT) and bob (symmetric NAT) served through their tunnels", 60*time.Second, both)

	// kill -9 + restart of the supernode, 20 times (PC2_NATLAB_RESTARTS
	// overrides): both nodes must be served again; the figure is the time
	// from the new supernode's readiness line (listening, wake sent) to
	// both pages served.
	restarts := 20
	if v, err := strconv.Atoi(os.Getenv("PC2_NATLAB_RESTARTS")); err == nil && v > 0 {
		restarts = v
	}
	var took, fromStart []time.Duration
	for i := range restarts {
		time.Sleep(time.Second) // scenario: idle tunnels
		syscall.Kill(super.Pid(), syscall.SIGKILL)
		<-super.Done()
		started := time.Now()
		super = startSuper()
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		for {
			line, err := super.NextLine(rctx)
			if err != nil {
				cancel()
				t.Fatalf("restart %d: no readiness line: %v\n%s", i+1, err, super.Stderr())
			}
			if strings.Contains(line, " ready") {
				break
			}
		}
		cancel()
		listening := time.Now()
		waitFor(t, fmt.Sprintf("both served after restart %d", i+1), 10*time.Second, both)
		took = append(took, time.Since(listening))
		fromStart = append(fromStart, time.Since(started))
	}
	slices.Sort(took)
	slices.Sort(fromStart)
	p95 := took[(len(took)*95+99)/100-1]
	t.Logf("NAT lab: %d kill -9 + restarts; both nodes served again within: min %v, p95 %v, max %v of the supernode listening (goal ≤ 2 s p95); from process start: p95 %v",
		len(took), took[0], p95, took[len(took)-1], fromStart[(len(fromStart)*95+99)/100-1])
	// Reported, not asserted: on a shared 2-core machine the figure moves
	// with the load; each restart is bounded by the 10 s wait above.
	super.Stop(5 * time.Second)
}

// listenInNetns opens a TCP listener inside the named network namespace
// (/run/netns/<ns>) from this process: the socket belongs to the
// namespace it was created in, so it can be served from any thread.
func listenInNetns(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // not unlocked if restoring fails: the thread then dies with us
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, lerr := net.Listen("tcp", addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			if ln != nil {
				ln.Close()
			}
			ch <- result{err: fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ln, lerr}
	}()
	r := <-ch
	return r.ln, r.err
}

// serveProxyHTTPS serves HTTPS behind a PROXY v2 header and answers each
// request with the source address the header carried.
func serveProxyHTTPS(ln net.Listener, cert tls.Certificate) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			h, err := proxyproto.Read(c, 512)
			if err != nil {
				return
			}
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			if _, err := http.ReadRequest(bufio.NewReader(tc)); err != nil {
				return
			}
			body := fmt.Sprintf("alice: visitor=%s\n", h.Source)
			fmt.Fprintf(tc, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		}()
	}
}
