package circuit_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
)

const memClientsEnv = "PC2_RELAY_MEM_CLIENTS"

// TestReservationMemory measures what one idle reservation (its control
// connection) costs the relay: N peers in a child process reserve, the
// relay's heap and goroutines are compared before and after.
// PC2_RELAY_IDLE=n sets N (default 200).
func TestReservationMemory(t *testing.T) {
	if os.Getenv(memClientsEnv) != "" {
		t.Skip("client side runs in TestReservationMemoryClients")
	}
	n := 200
	if v, err := strconv.Atoi(os.Getenv("PC2_RELAY_IDLE")); err == nil && v > 0 {
		n = v
	}
	kp := newKey(t)
	srv := circuit.NewServer(kp, circuit.Config{
		HandshakesPerIP: 1e6, HandshakesPerSecond: 1e6, HandshakeBurst: 1e6,
		ReservationsPerSecond: 1e6, ReservationBurst: 1e6,
	})
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	heap := func() (uint64, int) {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc, runtime.NumGoroutine()
	}
	h0, g0 := heap()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestReservationMemoryClients$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), memClientsEnv+"="+strconv.Itoa(n), "PC2_RELAY_MEM_ADDR="+addr.String(), "PC2_RELAY_MEM_ID="+kp.ID().String())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "RESERVED") {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatal("clients did not reserve")
	}
	waitFor(t, 30*time.Second, "all reservations", func() bool {
		_, res, _ := srv.Counts()
		return res == n
	})
	h1, g1 := heap()
	perRes := float64(int64(h1)-int64(h0)) / float64(n)
	t.Logf("%d idle reservations: relay heap +%.1f KiB each, %.2f goroutines each", n, perRes/1024, float64(g1-g0)/float64(n))
}

// TestReservationMemoryClients is the child of TestReservationMemory.
func TestReservationMemoryClients(t *testing.T) {
	v := os.Getenv(memClientsEnv)
	if v == "" {
		t.Skip("runs only as TestReservationMemory's child")
	}
	n, _ := strconv.Atoi(v)
	relayAddr, err := netip.ParseAddrPort(os.Getenv("PC2_RELAY_MEM_ADDR"))
	if err != nil {
		t.Fatal(err)
	}
	relayID, err := identity.ParseID(os.Getenv("PC2_RELAY_MEM_ID"))
	if err != nil {
		t.Fatal(err)
	}
	r := &testRelay{addr: relayAddr, kp: nil}
	for i := range n {
		sock := newSharedSocketAt(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, true)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cli, err := circuit.Dial(ctx, sock.tr, sock, newKey(t), r.addr, relayID, circuit.ClientConfig{})
		if err == nil {
			sock.setHandler(cli.Handle)
			_, err = cli.Reserve(ctx)
		}
		cancel()
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		defer cli.Close()
	}
	fmt.Println("RESERVED")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
}
