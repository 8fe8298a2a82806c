package tunnel

// Data connections: a second way to carry TLS passthrough visitors.
//
// A visitor of the SNI gateway speaks TLS end to end with the node's own
// service; the supernode only routes its bytes. Inside the tunnel those
// bytes are encrypted a second time (QUIC, or TLS over TCP) and cut into
// packets or mux frames, which is what caps a tunnelled visitor at about a
// quarter of a direct connection on the same machine (bench/RESULTS.md).
// A data connection is a plain TCP connection from the node to the
// supernode's TCP tunnel endpoint that carries one such visitor: both ends
// splice(2) it to the visitor's socket and to the local service, so the
// bytes are neither copied through user space nor encrypted again.
//
// The node keeps a few of them open and idle (ClientConfig.DataConns),
// like frp's work connections; the supernode takes one per visitor and the
// node opens a replacement. Each is bound to the node's current tunnel:
//
//	node → supernode, data hello (61 bytes, plaintext):
//	  "PC2D" | version u8 (=1) | node id (32) | seq u64 BE | mac (16)
//	  mac = HMAC-SHA256(K_mac, the 45 bytes before it)[:16]
//	supernode → node, when a visitor arrives:
//	  len u16 BE | AES-256-GCM(K_hdr, nonce = 0^4 | seq, Header, aad "PC2D")
//
// K_mac | K_hdr are 64 bytes exported from the tunnel's TLS 1.3 session
// (RFC 8446 §7.5), so only the node that holds the tunnel can add data
// connections to it, and only its supernode can send it visitors. The
// supernode accepts each seq once (a 64-wide window, as IPsec does), and a
// pooled connection found closed is skipped before use.
//
// What this gives up against a stream inside the tunnel, and why that is
// acceptable only for TLS passthrough (ServerConfig.DataServices, by
// default the gateway's "https"): an observer between supernode and node
// sees the visitor's TLS records (their sizes and timing, and the
// ClientHello, as an observer of the visitor's own path does) and can cut
// the connection; the visitor's address travels sealed. Plain HTTP and
// mapped ports never use data connections. A node with a bytes/s quota
// does not either: the quota is counted on the tunnel's streams.

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elacity/pc2/core/identity"
)

const (
	dataMagic  = "PC2D"
	dataMACLen = 16
	// DataHelloLen is the length of a data connection's hello.
	DataHelloLen = len(dataMagic) + 1 + identity.IDSize + 8 + dataMACLen
	// maxSealedHeader bounds the sealed header a node reads.
	maxSealedHeader = MaxHeaderLen + 16
	dataKeyLabel    = "EXPORTER-pc2-tunnel-data/1"
	dataReplayWidth = 64
)

// ErrBadDataConn is returned (wrapped) for a data hello or sealed header
// that does not decode or authenticate.
var ErrBadDataConn = errors.New("tunnel: bad data connection")

// DataKeys authenticates data connections and seals their headers for one
// tunnel session.
type DataKeys struct {
	mac  []byte
	aead cipher.AEAD
}

// NewDataKeys makes the keys from 64 bytes of secret (the tunnel's TLS
// exporter output).
func NewDataKeys(secret []byte) (*DataKeys, error) {
	if len(secret) != 64 {
		return nil, fmt.Errorf("tunnel: data key secret is %d bytes, want 64", len(secret))
	}
	block, err := aes.NewCipher(secret[32:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &DataKeys{mac: append([]byte(nil), secret[:32]...), aead: aead}, nil
}

// dataKeysOf exports sess's data connection keys.
func dataKeysOf(sess session) (*DataKeys, error) {
	secret, err := sess.exportKey(dataKeyLabel, 64)
	if err != nil {
		return nil, fmt.Errorf("tunnel: export data keys: %w", err)
	}
	return NewDataKeys(secret)
}

func (k *DataKeys) helloMAC(b []byte) []byte {
	m := hmac.New(sha256.New, k.mac)
	m.Write(b[:DataHelloLen-dataMACLen])
	return m.Sum(nil)[:dataMACLen]
}

// AppendHello appends node id's data hello with sequence number seq.
func (k *DataKeys) AppendHello(dst []byte, id identity.ID, seq uint64) []byte {
	start := len(dst)
	dst = append(dst, dataMagic...)
	dst = append(dst, Version)
	dst = append(dst, id[:]...)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	return append(dst, k.helloMAC(dst[start:])...)
}

// ParseDataHello decodes a data hello without checking its MAC (the node
// id says which tunnel's keys to check it with).
func ParseDataHello(b []byte) (id identity.ID, seq uint64, err error) {
	if len(b) != DataHelloLen {
		return id, 0, fmt.Errorf("%w: hello is %d bytes, want %d", ErrBadDataConn, len(b), DataHelloLen)
	}
	if string(b[:len(dataMagic)]) != dataMagic {
		return id, 0, fmt.Errorf("%w: not a data hello", ErrBadDataConn)
	}
	if v := b[len(dataMagic)]; v != Version {
		return id, 0, fmt.Errorf("%w: version %d, want %d", ErrBadDataConn, v, Version)
	}
	p := b[len(dataMagic)+1:]
	copy(id[:], p)
	seq = binary.BigEndian.Uint64(p[identity.IDSize:])
	if seq == 0 {
		return id, 0, fmt.Errorf("%w: sequence number 0", ErrBadDataConn)
	}
	return id, seq, nil
}

// VerifyHello reports whether hello carries a valid MAC under k.
func (k *DataKeys) VerifyHello(hello []byte) bool {
	return len(hello) == DataHelloLen && hmac.Equal(k.helloMAC(hello), hello[DataHelloLen-dataMACLen:])
}

func dataNonce(seq uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], seq)
	return n[:]
}

// SealHeader appends h sealed for the data connection seq.
func (k *DataKeys) SealHeader(dst []byte, seq uint64, h Header) ([]byte, error) {
	var pt [MaxHeaderLen]byte
	p, err := h.AppendBinary(pt[:0])
	if err != nil {
		return dst, err
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p)+k.aead.Overhead()))
	return k.aead.Seal(dst, dataNonce(seq), p, []byte(dataMagic)), nil
}

// ReadHeader reads and opens the sealed header of data connection seq:
// at most 2+maxSealedHeader bytes, exactly the header's.
func (k *DataKeys) ReadHeader(r io.Reader, seq uint64) (Header, error) {
	var buf [2 + maxSealedHeader]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return Header{}, err
	}
	n := int(binary.BigEndian.Uint16(buf[:2]))
	if n <= k.aead.Overhead() || n > maxSealedHeader {
		return Header{}, fmt.Errorf("%w: sealed header of %d bytes", ErrBadDataConn, n)
	}
	if _, err := io.ReadFull(r, buf[2:2+n]); err != nil {
		return Header{}, err
	}
	pt, err := k.aead.Open(buf[2:2], dataNonce(seq), buf[2:2+n], []byte(dataMagic))
	if err != nil {
		return Header{}, fmt.Errorf("%w: header does not authenticate", ErrBadDataConn)
	}
	h, used, err := ParseHeader(pt)
	if err != nil {
		return Header{}, err
	}
	if used != len(pt) {
		return Header{}, fmt.Errorf("%w: %d bytes after the header", ErrBadHeader, len(pt)-used)
	}
	return h, nil
}

// dataPool is one tunnel's idle data connections on the supernode.
type dataPool struct {
	keys   *DataKeys
	max    int
	mu     sync.Mutex
	idle   []idleData
	closed bool
	top    uint64 // highest seq accepted
	seen   uint64 // bit i: seq top-i accepted
}

type idleData struct {
	c   *net.TCPConn
	seq uint64
}

var (
	errDataReplay   = errors.New("tunnel: data connection sequence number reused")
	errDataPoolFull = errors.New("tunnel: node holds its most idle data connections")
	errDataClosed   = errors.New("tunnel: tunnel of the data connection ended")
)

// fresh accepts seq once within the replay window; the caller holds mu.
func (p *dataPool) fresh(seq uint64) bool {
	switch {
	case seq > p.top:
		if d := seq - p.top; d >= dataReplayWidth {
			p.seen = 0
		} else {
			p.seen <<= d
		}
		p.seen |= 1
		p.top = seq
		return true
	case p.top-seq >= dataReplayWidth:
		return false
	}
	bit := uint64(1) << (p.top - seq)
	if p.seen&bit != 0 {
		return false
	}
	p.seen |= bit
	return true
}

func (p *dataPool) add(c *net.TCPConn, seq uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return errDataClosed
	case !p.fresh(seq):
		return errDataReplay
	case len(p.idle) >= p.max:
		return errDataPoolFull
	}
	p.idle = append(p.idle, idleData{c, seq})
	return nil
}

// take returns the newest idle connection (the least likely to have gone
// stale).
func (p *dataPool) take() (idleData, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return idleData{}, false
	}
	d := p.idle[n-1]
	p.idle[n-1] = idleData{}
	p.idle = p.idle[:n-1]
	return d, true
}

func (p *dataPool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// close closes the idle connections and refuses new ones.
func (p *dataPool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, d := range idle {
		d.c.Close()
	}
}

// dataConn is a visitor's data connection as the gateway relays it: a TCP
// socket it can splice (TCP), and a Close that returns the node's stream
// quota.
type dataConn struct {
	*net.TCPConn
	once sync.Once
	done func()
}

// TCP returns the socket, for a splicing relay; Close must still be
// called on the dataConn.
func (c *dataConn) TCP() *net.TCPConn { return c.TCPConn }

func (c *dataConn) Close() error {
	c.once.Do(c.done)
	return c.TCPConn.Close()
}

// acceptData takes a data hello whose first byte was read already, and on
// success pools the connection on its node's tunnel. The caller's
// handshake deadline is still set on c.
func (s *Server) acceptData(c *net.TCPConn, first byte) {
	var b [DataHelloLen]byte
	b[0] = first
	refuse := func(why string, err error) {
		s.DataRefused.Add(1)
		s.log.Debug("tunnel: data connection refused", "from", c.RemoteAddr(), "why", why, "err", err)
		c.Close()
	}
	if _, err := io.ReadFull(c, b[1:]); err != nil {
		refuse("short hello", err)
		return
	}
	id, seq, err := ParseDataHello(b[:])
	if err != nil {
		refuse("bad hello", err)
		return
	}
	s.mu.Lock()
	t := s.tunnels[id]
	s.mu.Unlock()
	if t == nil || t.data == nil {
		refuse("no tunnel of the node", nil)
		return
	}
	if !t.data.keys.VerifyHello(b[:]) {
		refuse("bad mac", nil)
		return
	}
	c.SetDeadline(time.Time{})
	if err := t.data.add(c, seq); err != nil {
		refuse("pool", err)
		return
	}
	s.DataConns.Add(1)
}

// dialData sends h on one of t's idle data connections; nil when none is
// left.
func (s *Server) dialData(t *tunnelConn, h Header) net.Conn {
	var buf [2 + maxSealedHeader]byte
	for {
		d, ok := t.data.take()
		if !ok {
			return nil
		}
		if dataConnGone(d.c) {
			s.DataStale.Add(1)
			d.c.Close()
			continue
		}
		hdr, err := t.data.keys.SealHeader(buf[:0], d.seq, h)
		if err == nil {
			_ = d.c.SetWriteDeadline(time.Now().Add(time.Second))
			_, err = d.c.Write(hdr)
			_ = d.c.SetWriteDeadline(time.Time{})
		}
		if err != nil {
			s.DataStale.Add(1)
			d.c.Close()
			continue
		}
		s.DataUsed.Add(1)
		return &dataConn{TCPConn: d.c, done: t.streamDone}
	}
}

// dataStream is a data connection on the node: a stream whose Abort
// resets the connection.
type dataStream struct{ *net.TCPConn }

func (s dataStream) Abort() {
	_ = s.SetLinger(0)
	s.TCPConn.Close()
}

// startDataConns keeps c.cfg.DataConns idle data connections open for
// sess until it ends. Visitors served on them outlive sess (they are
// connections of their own) and end with ctx.
func (c *Client) startDataConns(ctx context.Context, sess session) {
	keys, err := dataKeysOf(sess)
	if err != nil {
		c.log.Warn("tunnel: no data connections", "err", err)
		return
	}
	pctx, cancel := context.WithCancel(ctx)
	context.AfterFunc(sess.Context(), cancel)
	var seq atomic.Uint64
	for range c.cfg.DataConns {
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			c.dataSlot(ctx, pctx, keys, &seq)
		}()
	}
}

// dataSlot keeps one idle data connection open: it waits on it for a
// visitor, hands the visitor to a goroutine of its own and opens the next.
// Failures back off like the tunnel's dials.
func (c *Client) dataSlot(ctx, pctx context.Context, keys *DataKeys, seq *atomic.Uint64) {
	failures := 0
	for pctx.Err() == nil {
		tc, h, err := c.awaitDataVisitor(pctx, keys, seq.Add(1))
		if err != nil {
			if pctx.Err() != nil {
				return
			}
			c.DataFailures.Add(1)
			c.log.Debug("tunnel: data connection", "supernode", c.cfg.SupernodeTCP, "err", err)
			t := time.NewTimer(Backoff(failures, c.cfg.BackoffMin, c.cfg.BackoffMax))
			failures++
			select {
			case <-pctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		failures = 0
		if c.streams.Add(1) > c.cfg.MaxStreams {
			c.streams.Add(-1)
			dataStream{tc}.Abort()
			continue
		}
		c.DataVisitors.Add(1)
		c.streamsWG.Add(1)
		go func() {
			defer c.streamsWG.Done()
			defer c.streams.Add(-1)
			c.serveVisitor(ctx, dataStream{tc}, h)
		}()
	}
}

// awaitDataVisitor opens a data connection and waits on it until the
// supernode sends a visitor's header (or ctx ends, or the supernode closes
// it).
func (c *Client) awaitDataVisitor(ctx context.Context, keys *DataKeys, seq uint64) (*net.TCPConn, Header, error) {
	d := net.Dialer{Timeout: c.cfg.DialTimeout, KeepAliveConfig: tcpKeepAlive}
	conn, err := d.DialContext(ctx, "tcp", c.cfg.SupernodeTCP)
	if err != nil {
		return nil, Header{}, err
	}
	tc := conn.(*net.TCPConn)
	stop := context.AfterFunc(ctx, func() { tc.Close() })
	var buf [DataHelloLen]byte
	_, err = tc.Write(keys.AppendHello(buf[:0], c.kp.ID(), seq))
	var h Header
	if err == nil {
		h, err = keys.ReadHeader(tc, seq)
	}
	if !stop() {
		tc.Close()
		return nil, Header{}, ctx.Err()
	}
	if err != nil {
		tc.Close()
		return nil, Header{}, err
	}
	return tc, h, nil
}
