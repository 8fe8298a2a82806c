package circuit_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/tools/natlab"
	"github.com/elacity/pc2/transport/quicid"
)

const labRoleEnv = "PC2_CIRCUIT_LAB_ROLE"

// TestNATLabSymmetricViaRelay is nat-dht.md N4's connectivity half: alice
// and bob, each behind a symmetric NAT (a new random port per destination:
// no hole punch can pair them), reach each other through a relay on the
// internet segment every time. Each trial opens a new session and a new
// end-to-end QUIC connection (peer ids verified) and echoes 64 KiB.
// PC2_RELAY_LAB_TRIALS sets the number of trials (default 20).
func TestNATLabSymmetricViaRelay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces (NAT lab)")
	}
	if err := natlab.CheckDeps(false); err != nil {
		t.Skipf("NAT lab dependencies missing (pc2 natlab install-deps): %v", err)
	}
	trials := 20
	if v, err := strconv.Atoi(os.Getenv("PC2_RELAY_LAB_TRIALS")); err == nil && v > 0 {
		trials = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sym, err := natlab.ParseNATSpec("sym")
	if err != nil {
		t.Fatal(err)
	}
	topo := natlab.Topology{
		Name:   "relay",
		Public: []natlab.PublicHost{{Name: "relay"}},
		NATs: []natlab.NAT{
			{Name: "a", Options: sym, Hosts: []string{"alice"}},
			{Name: "b", Options: sym, Hosts: []string{"bob"}},
		},
	}
	lab, err := natlab.Up(ctx, topo, natlab.Config{Name: fmt.Sprintf("rly%d", os.Getpid())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	relayNode, _ := lab.Node("relay")
	relayAddr := netip.AddrPortFrom(relayNode.Addrs[0], 39004)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	relayKey, aliceKey, bobKey := newKey(t), newKey(t), newKey(t)
	common := []string{"PC2_LAB_RELAY=" + relayAddr.String(), "PC2_LAB_RELAY_ID=" + relayKey.ID().String()}
	start := func(host, role string, kp *identity.KeyPair, env ...string) *natlab.Proc {
		t.Helper()
		env = append(env, common...)
		env = append(env, labRoleEnv+"="+role, "PC2_LAB_KEY="+hex.EncodeToString(kp.Seed()))
		p, err := lab.Start(ctx, host, []string{exe, "-test.run=^TestNATLabProcess$", "-test.v", "-test.timeout=3m"}, natlab.StartOptions{Env: env})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.Stop(2 * time.Second)
			if t.Failed() {
				t.Logf("%s stdout:\n%s\nstderr:\n%s", host, p.Stdout(), p.Stderr())
			}
		})
		return p
	}
	waitLine := func(p *natlab.Proc, prefix string) string {
		t.Helper()
		for {
			line, err := p.NextLine(ctx)
			if err != nil {
				t.Fatalf("%s: waiting for %q: %v", p.Host, prefix, err)
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
			if strings.HasPrefix(line, "TRIAL") {
				t.Log(line)
			}
		}
	}
	waitLine(start("relay", "relay", relayKey), "READY")
	waitLine(start("bob", "listen", bobKey), "RESERVED")
	alice := start("alice", "dial", aliceKey, "PC2_LAB_PEER="+bobKey.ID().String(), fmt.Sprintf("PC2_LAB_TRIALS=%d", trials))
	done := waitLine(alice, "DONE")
	t.Log(done)
	if want := fmt.Sprintf("DONE ok=%d of=%d", trials, trials); !strings.HasPrefix(done, want) {
		t.Fatalf("got %q, want %q: symmetric ↔ symmetric through the relay must always connect", done, want)
	}
}

// TestNATLabProcess is the body of the lab's processes; it runs only when
// started by TestNATLabSymmetricViaRelay.
func TestNATLabProcess(t *testing.T) {
	role := os.Getenv(labRoleEnv)
	if role == "" {
		t.Skip("runs only as a NAT lab process")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	seed, err := hex.DecodeString(os.Getenv("PC2_LAB_KEY"))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := identity.FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	relayAddr, err := netip.ParseAddrPort(os.Getenv("PC2_LAB_RELAY"))
	if err != nil {
		t.Fatal(err)
	}
	relayID, err := identity.ParseID(os.Getenv("PC2_LAB_RELAY_ID"))
	if err != nil {
		t.Fatal(err)
	}
	if role == "relay" {
		srv := circuit.NewServer(kp, circuit.Config{ConnectsPerSecond: 100, ConnectBurst: 100})
		if _, err := srv.Listen(relayAddr.String()); err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		fmt.Println("READY")
		<-ctx.Done()
		return
	}
	sock := newSharedSocketAt(t, &net.UDPAddr{IP: net.IPv4zero}, true)
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cli, err := circuit.Dial(dctx, sock.tr, sock, kp, relayAddr, relayID, circuit.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sock.setHandler(cli.Handle)
	defer cli.Close()
	p := &peer{kp: kp, sock: sock, cli: cli}
	switch role {
	case "listen":
		if _, err := cli.Reserve(dctx); err != nil {
			t.Fatal(err)
		}
		go serveEcho(listenE2E(t, p))
		fmt.Println("RESERVED")
		<-ctx.Done()
	case "dial":
		target, err := identity.ParseID(os.Getenv("PC2_LAB_PEER"))
		if err != nil {
			t.Fatal(err)
		}
		trials, _ := strconv.Atoi(os.Getenv("PC2_LAB_TRIALS"))
		tr := &quic.Transport{Conn: cli.PacketConn()}
		defer tr.Close()
		tlsConf, err := quicid.ClientConfig(kp, testALPN, target)
		if err != nil {
			t.Fatal(err)
		}
		ok := 0
		for i := range trials {
			err := func() error {
				tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				t0 := time.Now()
				addr, err := cli.Connect(tctx, target)
				if err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				t1 := time.Now()
				conn, err := tr.Dial(tctx, addr, tlsConf, e2eConfig())
				if err != nil {
					return fmt.Errorf("quic: %w", err)
				}
				defer func() {
					conn.CloseWithError(0, "")
					_ = cli.Release(tctx, addr)
				}()
				t2 := time.Now()
				if err := echoOnce(tctx, conn, 64<<10); err != nil {
					return err
				}
				fmt.Printf("TRIAL %d ok signalling=%v quic-handshake=%v echo64k=%v rtt=%v\n", i, t1.Sub(t0), t2.Sub(t1), time.Since(t2), conn.ConnectionStats().SmoothedRTT)
				return nil
			}()
			if err != nil {
				fmt.Printf("TRIAL %d failed: %v\n", i, err)
				continue
			}
			ok++
		}
		fmt.Printf("DONE ok=%d of=%d\n", ok, trials)
		<-ctx.Done()
	default:
		t.Fatalf("unknown role %q", role)
	}
}
