package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/dht/routing"
)

// fakePeer is one identity on its own loopback socket that answers the
// node's PINGs and FIND_NODEs (with no nodes) and can store records on it.
type fakePeer struct {
	kp    *identity.KeyPair
	codec *packet.Codec
	conn  *net.UDPConn
	node  identity.ID
	to    netip.AddrPort
	resp  chan *message.Message
	txid  uint64
}

func newFakePeer(kp *identity.KeyPair, node identity.ID, to netip.AddrPort) (*fakePeer, error) {
	c, err := packet.New(kp, packet.Config{})
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	f := &fakePeer{kp: kp, codec: c, conn: conn, node: node, to: to, resp: make(chan *message.Message, 4), txid: 1}
	go f.serve()
	return f, nil
}

func (f *fakePeer) send(m *message.Message) error {
	body, err := m.Append(nil, message.V3)
	if err != nil {
		return err
	}
	dg, err := f.codec.Seal(nil, f.node, body, packet.IPv4)
	if err != nil {
		return err
	}
	_, err = f.conn.WriteToUDPAddrPort(dg, f.to)
	return err
}

func (f *fakePeer) serve() {
	buf := make([]byte, 4096)
	for {
		k, _, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		_, plain, err := f.codec.Open(nil, buf[:k], packet.IPv4)
		if err != nil {
			continue
		}
		var m message.Message
		if m.Decode(plain, message.V3) != nil {
			continue
		}
		if m.Type != message.TypeRequest {
			select {
			case f.resp <- m.Clone():
			default:
			}
			continue
		}
		var r message.Message
		r.Respond(&m)
		r.Version = m.Version
		f.send(&r)
	}
}

// call sends a request and waits for its answer.
func (f *fakePeer) call(m *message.Message) (*message.Message, error) {
	f.txid += 3
	m.Type, m.Txid, m.Version = message.TypeRequest, f.txid, message.MakeVersion("PC", 1)
	if err := f.send(m); err != nil {
		return nil, err
	}
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case r := <-f.resp:
			if r.Txid == m.Txid {
				return r, nil
			}
		case <-timer.C:
			return nil, fmt.Errorf("%v: no answer", m.Method)
		}
	}
}

// store asks for a token and stores one record.
func (f *fakePeer) store(target identity.ID, m *message.Message) error {
	r, err := f.call(&message.Message{Method: message.MethodFindNode, Target: target, Want: message.WantIPv4 | message.WantToken})
	if err != nil {
		return err
	}
	m.Token = r.Token
	r, err = f.call(m)
	if err != nil {
		return err
	}
	if r.Type != message.TypeResponse {
		return fmt.Errorf("%v refused: %d %s", m.Method, r.Err.Code, r.Err.Message)
	}
	return nil
}

var metricRE = func(name string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)`)
}

func scrape(url, name string) float64 {
	resp, err := http.Get(url)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	m := metricRE(name).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func procStatus(pid int) map[string]float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseFloat(f[0], 64)
			out[k] = n / 1024
		}
	}
	return out
}

// BenchmarkDHTNodeRSS measures the resident memory of a standalone
// `pc2 dht` process (built without the race detector) whose routing table
// is full (contacts for the first 12 buckets, as a node in a network of
// ~10^4 nodes has) and which stores 10,000 records for others: 5,000
// signed values of 512 bytes and 5,000 peer records with a 200-byte
// extra. Run with -benchtime 1x; it reports VmRSS, its anonymous and
// file-backed parts, and the Go heap in use.
func BenchmarkDHTNodeRSS(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "pc2")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	for range b.N {
		benchRSSOnce(b, bin)
	}
}

func benchRSSOnce(b *testing.B, bin string) {
	p, err := startDHTBin(bin, 0, filepath.Join(b.TempDir(), "n"))
	if err != nil {
		b.Fatal(err)
	}
	defer p.stop()
	nodeID := p.info.ID
	to := netip.MustParseAddrPort(p.info.Extra["dht.udp4"])
	idle := procStatus(p.cmd.Process.Pid)

	// Identities for buckets 0..11: 16 contacts and 8 replacements each.
	const buckets, perBucket = 12, 24
	var peers []*fakePeer
	defer func() {
		for _, f := range peers {
			f.conn.Close()
		}
	}()
	for bi := range buckets {
		for got := 0; got < perBucket; {
			kp, err := identity.Generate(rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			if routing.CommonPrefixLen(nodeID, kp.ID()) != bi {
				continue
			}
			f, err := newFakePeer(kp, nodeID, to)
			if err != nil {
				b.Fatal(err)
			}
			peers = append(peers, f)
			got++
		}
	}
	// Each says hello; the node pings each back before trusting it.
	for _, f := range peers {
		f.send(&message.Message{Type: message.TypeRequest, Method: message.MethodPing, Txid: 1, Version: message.MakeVersion("PC", 1)})
	}
	deadline := time.Now().Add(60 * time.Second)
	var table float64
	for {
		table = scrape(p.info.Metrics, `pc2_dht_routing_table_size{family="IPv4"}`)
		if table >= float64(buckets*16) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}

	// 10,000 records, spread over the fake peers (each within the
	// node's per-source budget).
	const values, peerRecords = 5000, 5000
	var stored, failed atomic.Int64
	var firstErr atomic.Value
	extra := []byte(`{"name":"` + strings.Repeat("x", 180) + `"}`)
	var wg sync.WaitGroup
	start := time.Now()
	for w, f := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < values+peerRecords; i += len(peers) {
				owner, _ := identity.Generate(rand.Reader)
				var err error
				if i < values {
					data := bytes.Repeat([]byte{byte(i)}, 512)
					v, _ := record.NewSigned(owner, 1, data)
					err = f.store(owner.ID(), &message.Message{Method: message.MethodStoreValue, Value: v, HasValue: true})
				} else {
					pi, _ := record.NewPeer(owner, nil, 1, int64(i), fmt.Sprintf("tcp://203.0.113.%d:%d", i%250, 1024+i), extra)
					err = f.store(owner.ID(), &message.Message{Method: message.MethodAnnouncePeer, Peer: pi})
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				stored.Add(1)
			}
		}()
	}
	wg.Wait()
	storeTime := time.Since(start)
	if failed.Load() > 0 {
		b.Fatalf("%d stores failed, first: %v", failed.Load(), firstErr.Load())
	}
	sv := scrape(p.info.Metrics, "pc2_dht_stored_values")
	sp := scrape(p.info.Metrics, "pc2_dht_stored_peers")
	if sv != values || sp != peerRecords {
		b.Fatalf("node reports %v values and %v peers", sv, sp)
	}
	time.Sleep(3 * time.Second) // let the node settle (GC, background pings) before reading RSS
	st := procStatus(p.cmd.Process.Pid)
	heap := scrape(p.info.Metrics, "go_memstats_heap_inuse_bytes") / (1 << 20)
	b.Logf("routing table %v contacts; %d records stored in %v (%.0f/s, each fsynced before the answer)",
		table, stored.Load(), storeTime.Round(time.Millisecond), float64(stored.Load())/storeTime.Seconds())
	dbSize := int64(-1)
	if fi, err := os.Stat(filepath.Join(p.data, "pc2.db")); err == nil {
		dbSize = fi.Size()
	}
	b.Logf("idle after start: VmRSS %.1f MiB (anon %.1f, file %.1f); loaded: VmRSS %.1f MiB (anon %.1f, file %.1f), Go heap in use %.1f MiB; database file %.1f MiB",
		idle["VmRSS"], idle["RssAnon"], idle["RssFile"], st["VmRSS"], st["RssAnon"], st["RssFile"], heap, float64(dbSize)/(1<<20))
	var ms []string
	for _, m := range []string{"heap_alloc", "heap_inuse", "heap_idle", "heap_released", "heap_sys", "next_gc", "stack_inuse", "sys"} {
		ms = append(ms, fmt.Sprintf("%s %.1f", m, scrape(p.info.Metrics, "go_memstats_"+m+"_bytes")/(1<<20)))
	}
	b.Logf("Go memstats (MiB): %s", strings.Join(ms, ", "))
	b.ReportMetric(st["VmRSS"], "RSS-MiB")
	b.ReportMetric(st["RssAnon"], "anon-MiB")
	b.ReportMetric(heap, "heap-MiB")
	b.ReportMetric(table, "contacts")
}
