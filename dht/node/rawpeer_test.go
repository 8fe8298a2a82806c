package node

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
)

// rawPeer is a hand-driven DHT peer for tests: its own identity and UDP
// socket, sending exactly the datagrams a test builds and counting bytes
// both ways.
type rawPeer struct {
	t     testing.TB
	kp    *identity.KeyPair
	codec *packet.Codec
	conn  *net.UDPConn

	mu           sync.Mutex
	sent, recvd  int // bytes
	nsent, nrecv int // datagrams
	txid         uint64
}

func newRawPeer(t testing.TB, bind string) *rawPeer {
	t.Helper()
	kp := newKey(t)
	c, err := packet.New(kp, packet.Config{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(bind)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawPeer{t: t, kp: kp, codec: c, conn: conn, txid: 100}
}

func (p *rawPeer) addr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *rawPeer) contact() Contact { return Contact{ID: p.kp.ID(), Addr: p.addr()} }

func (p *rawPeer) nextTxid() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.txid += 7
	return p.txid
}

// seal encodes and seals m for to in framing fr.
func (p *rawPeer) seal(to identity.ID, m *message.Message, fr packet.Framing) []byte {
	p.t.Helper()
	d := message.V3
	if fr == packet.FramingV2 {
		d = message.V2
	}
	body, err := m.Append(nil, d)
	if err != nil {
		p.t.Fatal(err)
	}
	var dg []byte
	if fr == packet.FramingV2 {
		dg, err = p.codec.SealV2(nil, to, body, packet.IPv4)
	} else {
		dg, err = p.codec.Seal(nil, to, body, packet.IPv4)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return dg
}

func (p *rawPeer) sendRaw(dg []byte, to netip.AddrPort) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDPAddrPort(dg, to); err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.sent += len(dg)
	p.nsent++
	p.mu.Unlock()
}

// send sends request m (txid filled in) to n and returns the txid.
func (p *rawPeer) send(n Contact, m *message.Message, fr packet.Framing) uint64 {
	m.Type = message.TypeRequest
	if m.Txid == 0 {
		m.Txid = p.nextTxid()
	}
	p.sendRaw(p.seal(n.ID, m, fr), n.Addr)
	return m.Txid
}

type rawIn struct {
	msg  *message.Message
	fr   packet.Framing
	from netip.AddrPort
	id   identity.ID
	size int
}

var errNoPacket = errors.New("no packet")

// recv reads one datagram within d and decodes it.
func (p *rawPeer) recv(d time.Duration) (rawIn, error) {
	buf := make([]byte, 4096)
	p.conn.SetReadDeadline(time.Now().Add(d))
	n, from, err := p.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return rawIn{}, errNoPacket
		}
		return rawIn{}, err
	}
	p.mu.Lock()
	p.recvd += n
	p.nrecv++
	p.mu.Unlock()
	id, plain, fr, err := p.codec.OpenAny(nil, buf[:n], packet.IPv4)
	if err != nil {
		return rawIn{size: n, from: from}, err
	}
	var m message.Message
	if err := m.Decode(plain, dialectOf(fr)); err != nil {
		return rawIn{size: n, from: from}, err
	}
	return rawIn{msg: m.Clone(), fr: fr, from: from, id: id, size: n}, nil
}

// await waits for the answer to txid, answering PINGs on the way when
// answerPings (the node's challenge), and returns it.
func (p *rawPeer) await(txid uint64, answerPings bool, d time.Duration) (rawIn, error) {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return rawIn{}, errNoPacket
		}
		in, err := p.recv(left)
		if err != nil {
			if errors.Is(err, errNoPacket) {
				return rawIn{}, err
			}
			continue
		}
		if in.msg.Type == message.TypeRequest {
			if answerPings && in.msg.Method == message.MethodPing {
				var r message.Message
				r.Respond(in.msg)
				p.sendRaw(p.seal(in.id, &r, in.fr), in.from)
			}
			continue
		}
		if in.msg.Txid == txid {
			return in, nil
		}
	}
}

// call sends m and waits for its answer, answering challenges.
func (p *rawPeer) call(n Contact, m *message.Message, fr packet.Framing) rawIn {
	p.t.Helper()
	txid := p.send(n, m, fr)
	in, err := p.await(txid, true, 5*time.Second)
	if err != nil {
		p.t.Fatalf("%v to %s: %v", m.Method, n.Addr, err)
	}
	return in
}

func (p *rawPeer) counts() (sent, recvd, nsent, nrecv int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.recvd, p.nsent, p.nrecv
}

func contactOf(n *Node) Contact { return Contact{ID: n.ID(), Addr: n.Addrs()[0]} }
