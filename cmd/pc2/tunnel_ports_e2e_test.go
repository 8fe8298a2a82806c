package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/elacity/pc2/gateway/testcert"
)

// TestTunnelTargetAndPorts runs a supernode and a node as real processes.
// The node registers alice.ela.city with target and http "tunnel" and
// asks for a public TCP port (ssh) and UDP port (game). The test checks
// that TLS (SNI) and plain HTTP reach the node's services over its
// tunnel, that the mapped ports carry TCP and UDP to its local services
// (the granted ports read from the node's metrics), and that once the
// node is stopped the gateway refuses at once: a TLS alert, an HTTP 502.
func TestTunnelTargetAndPorts(t *testing.T) {
	cert, _, err := testcert.New("alice.ela.city")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer tlsLn.Close()
	go http.Serve(tlsLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "alice over https\n") }))
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer httpLn.Close()
	go http.Serve(httpLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "alice over http, host %s\n", r.Host)
	}))
	sshLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sshLn.Close()
	go func() {
		for {
			c, err := sshLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "SSH-2.0-alice\r\n")
				io.Copy(c, c)
			}()
		}
	}()
	game, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer game.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := game.ReadFrom(buf)
			if err != nil {
				return
			}
			game.WriteTo(append([]byte("pong "), buf[:n]...), from)
		}
	}()

	lo := freePorts(t, 1)[0]
	super := startPC2(t, "supernode", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "supernode.yaml", fmt.Sprintf(`
metrics:
  listen: "off"
registry:
  domains: [ela.city]
tunnel:
  ports:
    range: %d-%d
`, lo, lo+20)))
	api, sni, web, tun := super.Extra["registry.api"], super.Extra["sni.listen"], super.Extra["http.listen"], super.Extra["tunnel.listen"]
	node := startPC2Proc(t, "node", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "node.yaml", fmt.Sprintf(`
names:
  registry: %s
  names:
    - name: alice.ela.city
      target: tunnel
      http: tunnel
tunnel-client:
  supernode: %s
  supernodeID: %s
  services:
    - name: https
      addr: %s
    - name: http
      addr: %s
    - name: ssh
      addr: %s
    - name: game
      addr: %s
  ports:
    - service: ssh
      proto: tcp
    - service: game
      proto: udp
`, api, tun, super.ID, tlsLn.Addr(), httpLn.Addr(), sshLn.Addr(), game.LocalAddr())))

	tlsGet := func() (string, error) {
		d := &net.Dialer{Timeout: 3 * time.Second, Deadline: time.Now().Add(3 * time.Second)}
		c, err := tls.DialWithDialer(d, "tcp", sni, &tls.Config{ServerName: "alice.ela.city", RootCAs: pool})
		if err != nil {
			return "", err
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: alice.ela.city\r\nConnection: close\r\n\r\n")
		b, err := io.ReadAll(c)
		return string(b), err
	}
	httpGet := func() (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+web+"/", nil)
		req.Host = "alice.ela.city"
		res, err := (&http.Client{Timeout: 3 * time.Second}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), nil
	}
	waitFor(t, "alice served over https through the tunnel", 30*time.Second, func() bool {
		body, err := tlsGet()
		return err == nil && strings.HasSuffix(body, "alice over https\n")
	})
	if code, body, err := httpGet(); err != nil || code != 200 || body != "alice over http, host alice.ela.city\n" {
		t.Fatalf("http through the tunnel: %d %q %v", code, body, err)
	}

	// The granted ports, as the node's metrics show them.
	grants := map[string]string{}
	re := regexp.MustCompile(`pc2_tunnel_client_port\{proto="(tcp|udp)",service="(\w+)"[^}]*\} (\d+)`)
	waitFor(t, "both ports granted", 10*time.Second, func() bool {
		res, err := http.Get(node.info.Metrics)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			if m[3] != "0" {
				grants[m[1]] = "127.0.0.1:" + m[3]
			}
		}
		return len(grants) == 2
	})
	c, err := net.DialTimeout("tcp", grants["tcp"], 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "hello\n")
	got := make([]byte, len("SSH-2.0-alice\r\nhello\n"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "SSH-2.0-alice\r\nhello\n" {
		t.Fatalf("mapped TCP port %s: %q %v", grants["tcp"], got, err)
	}
	c.Close()
	u, err := net.Dial("udp", grants["udp"])
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	waitFor(t, "a UDP echo through the mapped port", 5*time.Second, func() bool {
		u.Write([]byte("ping"))
		u.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		buf := make([]byte, 64)
		n, err := u.Read(buf)
		return err == nil && string(buf[:n]) == "pong ping"
	})

	// The node stops (and closes its tunnel): the gateway refuses at once.
	node.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-node.exited; err != nil {
		t.Errorf("node exit: %v", err)
	}
	node.exited <- nil // for the cleanup
	waitFor(t, "the TLS refusal", 10*time.Second, func() bool {
		start := time.Now()
		_, err := tlsGet()
		return err != nil && strings.Contains(err.Error(), "tls: internal error") && time.Since(start) < 2*time.Second
	})
	start := time.Now()
	code, body, err := httpGet()
	if err != nil || code != 502 || body != "node offline: it holds no tunnel to this supernode\n" || time.Since(start) > 2*time.Second {
		t.Fatalf("http to a node without a tunnel: %d %q %v after %v", code, body, err, time.Since(start))
	}
}

// TestNameRegisterTunnelFlag: `pc2 name register --tunnel` registers the
// target "tunnel"; with a contradicting --target it is a usage error.
func TestNameRegisterTunnelFlag(t *testing.T) {
	super := startPC2(t, "supernode", "--dev", "--data", t.TempDir(), "--config", writeFile(t, "supernode.yaml", "metrics:\n  listen: \"off\"\nregistry:\n  domains: [ela.city]\n"))
	api := super.Extra["registry.api"]
	keys := newKeyDir(t)
	if r := pc2(t, "", "name", "register", "--tunnel", "--target", "127.0.0.1:443", "--registry", api, "--data", keys, "bob.ela.city"); r.code != 2 {
		t.Fatalf("--tunnel with --target: code %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := pc2(t, "", "name", "register", "--tunnel", "--registry", api, "--data", keys, "bob.ela.city")
	if r.code != 0 || !strings.Contains(r.stdout, "bob.ela.city → tunnel") {
		t.Fatalf("register --tunnel: code %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = pc2(t, "", "name", "show", "--registry", api, "bob.ela.city")
	if r.code != 0 || !strings.Contains(r.stdout, "tunnel") {
		t.Fatalf("show: code %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
