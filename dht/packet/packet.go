package packet

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
)

// Framing constants.
const (
	IDSize     = identity.IDSize
	NonceSize  = cryptobox.NonceSize
	MACSize    = cryptobox.Overhead
	OverheadV3 = IDSize + NonceSize + MACSize // 72
	OverheadV2 = IDSize + MACSize             // 48

	// MinV3 is Boson 3.1's inbound floor, 32+16+16+10 (it counts the MAC
	// twice where nonce+MAC was probably meant; kept for identical behaviour).
	MinV3 = IDSize + MACSize + MACSize + 10
	// MinV2 is Boson 2.0's inbound floor, 13+32+16.
	MinV2 = 13 + IDSize + MACSize

	// InboundSlack is how far above the outbound limit an inbound datagram
	// may be before it is dropped unread.
	InboundSlack = 512

	// BufferSize is the size of the receive buffers the pool hands out:
	// larger than any acceptable datagram, so an oversized one is seen
	// (and dropped) rather than silently truncated into an acceptable size.
	BufferSize = 2048
)

// Network is the address family a datagram travels on; it sets the limits.
type Network uint8

// Networks.
const (
	IPv4 Network = 4
	IPv6 Network = 6
)

// NetworkOf returns the network of addr (IPv4-mapped addresses are IPv4).
func NetworkOf(addr netip.Addr) Network {
	if addr.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// MaxPacket is the largest datagram sent on n (Boson 3.1).
func (n Network) MaxPacket() int {
	if n == IPv6 {
		return 1200
	}
	return 1400
}

// MaxMessage is the largest CBOR message that fits a v3 datagram on n.
func (n Network) MaxMessage() int { return n.MaxPacket() - OverheadV3 }

// MaxInbound is the largest datagram accepted on n.
func (n Network) MaxInbound() int { return n.MaxPacket() + InboundSlack }

// Framing tells which datagram layout a packet used.
type Framing uint8

// Framings.
const (
	FramingV3 Framing = 3
	FramingV2 Framing = 2
)

func (f Framing) String() string { return fmt.Sprintf("v%d", uint8(f)) }

// Errors. Inbound errors mean "drop the packet"; none of them is answered.
var (
	ErrTooShort = errors.New("packet: datagram too short")
	ErrTooLarge = errors.New("packet: inbound datagram too large")
	ErrTooBig   = errors.New("packet: message too big for one datagram") // answer 205
	ErrSender   = errors.New("packet: sender id is not a usable key")
	ErrAuth     = errors.New("packet: authentication failed")
	ErrReplay   = errors.New("packet: nonce repeated")
	ErrBusy     = errors.New("packet: new-peer budget exhausted")
	ErrOverlap  = errors.New("packet: output buffer overlaps the input")
)

// SenderID returns the claimed sender id of a datagram without any
// cryptographic work, for blacklists and throttles that run before Open.
func SenderID(pkt []byte) (identity.ID, error) {
	var id identity.ID
	if len(pkt) < IDSize {
		return id, ErrTooShort
	}
	copy(id[:], pkt)
	return id, nil
}

// Config tunes a Codec. The zero value is usable.
type Config struct {
	// Peers bounds the number of cached peer contexts (default 4096, about
	// 1 MiB). When full, the least recently used context is dropped; a
	// dropped peer costs one more key agreement on its next packet.
	Peers int
	// MaxNewPeersPerSecond caps the key agreements for unknown inbound
	// senders (default 2048/s, a burst of as many; < 0 disables the cap).
	// At about 85 µs each, the default bounds a flood of fresh ids to
	// roughly a fifth of one core.
	MaxNewPeersPerSecond int
	// Rand is the source of starting nonces (default crypto/rand).
	Rand io.Reader
}

// Stats are cumulative counters of a Codec.
type Stats struct {
	Precomputes uint64 // key agreements performed
	Evictions   uint64 // contexts dropped by the LRU
	Busy        uint64 // inbound packets of unknown senders refused by the budget
	BadSenders  uint64 // sender ids that are not keys
}

// Codec seals and opens datagrams for one local identity. It is safe for
// concurrent use.
type Codec struct {
	self  *identity.KeyPair
	xsk   [32]byte // our X25519 secret key
	xpk   [32]byte // our X25519 public key (v2 nonce)
	rand  io.Reader
	limit int

	mu       sync.Mutex
	peers    map[identity.ID]*peer
	lru      peer // sentinel of the recency list: lru.next is the most recent
	budget   float64
	rate     float64
	lastFill time.Time

	precomputes, evictions, busy, badSenders atomic.Uint64
}

// peer is the crypto context of one remote node.
type peer struct {
	id      identity.ID
	key     cryptobox.SharedKey
	v2nonce cryptobox.Nonce

	mu      sync.Mutex
	send    cryptobox.Nonce // next v3 nonce to send
	last    cryptobox.Nonce // last v3 nonce accepted
	hasLast bool

	prev, next *peer // recency list, guarded by Codec.mu
}

// New returns a Codec for the local identity self.
func New(self *identity.KeyPair, cfg Config) (*Codec, error) {
	if cfg.Peers <= 0 {
		cfg.Peers = 4096
	}
	if cfg.MaxNewPeersPerSecond == 0 {
		cfg.MaxNewPeersPerSecond = 2048
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	xpk, err := self.ID().X25519Public()
	if err != nil {
		return nil, fmt.Errorf("packet: local id: %w", err)
	}
	c := &Codec{
		self:  self,
		xsk:   self.X25519Private(),
		xpk:   xpk,
		rand:  cfg.Rand,
		limit: cfg.Peers,
		peers: make(map[identity.ID]*peer, min(cfg.Peers, 1024)),
		rate:  float64(cfg.MaxNewPeersPerSecond),
	}
	c.budget = c.rate
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c, nil
}

// ID returns the local node id.
func (c *Codec) ID() identity.ID { return c.self.ID() }

// Stats returns the codec's counters.
func (c *Codec) Stats() Stats {
	return Stats{
		Precomputes: c.precomputes.Load(),
		Evictions:   c.evictions.Load(),
		Busy:        c.busy.Load(),
		BadSenders:  c.badSenders.Load(),
	}
}

// Len returns the number of cached peer contexts.
func (c *Codec) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.peers)
}

// twinKey is the cache key of id: the id with its sign bit (bit 255)
// cleared. An Ed25519 id and its sign-flipped twin (-P) have the same
// X25519 key (the Montgomery u ignores the sign), hence the same box key:
// whoever holds one can speak as the other, and a datagram of one verifies
// under the other. Keying the cache by the pair lets the Codec bind one id
// to a box key at a time and refuse the twin.
func twinKey(id identity.ID) identity.ID {
	id[31] &^= 0x80
	return id
}

// errTwin is returned for the sign-twin of a cached peer.
var errTwin = fmt.Errorf("%w: sign-flipped twin of a known peer id", ErrSender)

// lookup returns the cached context of id, marking it most recently used,
// or errTwin when the cached context belongs to id's twin.
func (c *Codec) lookup(id identity.ID) (*peer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[twinKey(id)]
	if p == nil {
		return nil, nil
	}
	if p.id != id {
		return nil, errTwin
	}
	if c.lru.next != p {
		p.unlink()
		c.pushFront(p)
	}
	return p, nil
}

func (p *peer) unlink() { p.prev.next, p.next.prev = p.next, p.prev }

func (c *Codec) pushFront(p *peer) {
	p.prev, p.next = &c.lru, c.lru.next
	c.lru.next.prev = p
	c.lru.next = p
}

// admit inserts p unless another goroutine inserted the same peer (or its
// twin) first, in which case the cached context wins.
func (c *Codec) admit(p *peer) (*peer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := twinKey(p.id)
	if q := c.peers[k]; q != nil {
		if q.id != p.id {
			return nil, errTwin
		}
		return q, nil
	}
	if len(c.peers) >= c.limit {
		old := c.lru.prev
		old.unlink()
		delete(c.peers, twinKey(old.id))
		c.evictions.Add(1)
	}
	c.peers[k] = p
	c.pushFront(p)
	return p, nil
}

// budgetLeft refills the new-peer budget and reports whether a token is
// left; take spends one. Checking before the point decompression makes a
// refusal under flood cost no curve arithmetic, and spending only after it
// keeps ids that are not keys from draining the budget.
func (c *Codec) budgetLeft(take bool) bool {
	if c.rate < 0 {
		return true
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.lastFill.IsZero() {
		c.budget = min(c.rate, c.budget+now.Sub(c.lastFill).Seconds()*c.rate)
	}
	c.lastFill = now
	if c.budget < 1 {
		return false
	}
	if take {
		c.budget--
	}
	return true
}

// newPeer performs the key agreement with id. The point decompression in
// X25519Public rejects ids that are not Ed25519 points before the scalar
// multiplication; X25519 rejects low-order points.
//
// For an inbound sender (budgeted) the new-peer budget is checked first and
// taken after the point check, so ids that are not keys cannot spend it.
func (c *Codec) newPeer(id identity.ID, budgeted bool) (*peer, error) {
	if id == c.self.ID() {
		c.badSenders.Add(1)
		return nil, fmt.Errorf("%w: own id", ErrSender)
	}
	if budgeted && !c.budgetLeft(false) {
		c.busy.Add(1)
		return nil, ErrBusy
	}
	pk, err := id.X25519Public()
	if err != nil {
		c.badSenders.Add(1)
		return nil, fmt.Errorf("%w: %v", ErrSender, err)
	}
	if budgeted && !c.budgetLeft(true) {
		c.busy.Add(1)
		return nil, ErrBusy
	}
	key, err := cryptobox.PrecomputeX25519(&c.xsk, &pk)
	if err != nil {
		c.badSenders.Add(1)
		return nil, fmt.Errorf("%w: %v", ErrSender, err)
	}
	c.precomputes.Add(1)
	p := &peer{id: id, key: key}
	for i := range p.v2nonce {
		p.v2nonce[i] = c.xpk[i] ^ pk[i]
	}
	if _, err := io.ReadFull(c.rand, p.send[:]); err != nil {
		return nil, fmt.Errorf("packet: nonce: %w", err)
	}
	return p, nil
}

// outbound returns the context for sending to id, creating it if needed.
func (c *Codec) outbound(id identity.ID) (*peer, error) {
	if p, err := c.lookup(id); p != nil || err != nil {
		return p, err
	}
	p, err := c.newPeer(id, false)
	if err != nil {
		return nil, err
	}
	return c.admit(p)
}

// Seal appends the v3 datagram carrying msg to the peer to onto dst. msg
// must not overlap the appended part of dst.
func (c *Codec) Seal(dst []byte, to identity.ID, msg []byte, n Network) ([]byte, error) {
	if OverheadV3+len(msg) > n.MaxPacket() {
		return dst, fmt.Errorf("%w: %d bytes on %v", ErrTooBig, OverheadV3+len(msg), n)
	}
	p, err := c.outbound(to)
	if err != nil {
		return dst, err
	}
	p.mu.Lock()
	nonce := p.send
	p.send.Increment()
	p.mu.Unlock()
	self := c.self.ID()
	dst = append(dst, self[:]...)
	dst = append(dst, nonce[:]...)
	return p.key.Seal(dst, msg, &nonce), nil
}

// SealV2 appends the v2 datagram carrying msg to the peer to onto dst.
func (c *Codec) SealV2(dst []byte, to identity.ID, msg []byte, n Network) ([]byte, error) {
	if OverheadV2+len(msg) > n.MaxPacket() {
		return dst, fmt.Errorf("%w: %d bytes on %v", ErrTooBig, OverheadV2+len(msg), n)
	}
	p, err := c.outbound(to)
	if err != nil {
		return dst, err
	}
	self := c.self.ID()
	dst = append(dst, self[:]...)
	return p.key.Seal(dst, msg, &p.v2nonce), nil
}

func (n Network) String() string {
	if n == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Open authenticates a v3 datagram and appends its plaintext to dst, which
// must not overlap pkt. It returns the sender id and the plaintext.
func (c *Codec) Open(dst, pkt []byte, n Network) (identity.ID, []byte, error) {
	from, plain, _, err := c.open(dst, pkt, n, true, false)
	return from, plain, err
}

// OpenV2 authenticates a v2 datagram.
func (c *Codec) OpenV2(dst, pkt []byte, n Network) (identity.ID, []byte, error) {
	from, plain, _, err := c.open(dst, pkt, n, false, true)
	return from, plain, err
}

// OpenAny tries the v3 framing, then the v2 one, and reports which one
// authenticated. Use it to learn whether an unknown peer speaks v2.
func (c *Codec) OpenAny(dst, pkt []byte, n Network) (identity.ID, []byte, Framing, error) {
	return c.open(dst, pkt, n, true, true)
}

func overlaps(a, b []byte) bool {
	if cap(a) == 0 || len(b) == 0 {
		return false
	}
	a = a[:cap(a)]
	// The test of crypto/internal/alias.AnyOverlap, which secretbox applies
	// with a panic; checked here so a caller's mistake is an error.
	return uintptr(unsafe.Pointer(&a[0])) <= uintptr(unsafe.Pointer(&b[len(b)-1])) &&
		uintptr(unsafe.Pointer(&b[0])) <= uintptr(unsafe.Pointer(&a[len(a)-1]))
}

func (c *Codec) open(dst, pkt []byte, n Network, v3, v2 bool) (identity.ID, []byte, Framing, error) {
	var from identity.ID
	minLen := MinV3
	if v2 {
		minLen = MinV2
	}
	switch {
	case len(pkt) < minLen:
		return from, nil, 0, fmt.Errorf("%w: %d bytes", ErrTooShort, len(pkt))
	case len(pkt) > n.MaxInbound():
		return from, nil, 0, fmt.Errorf("%w: %d bytes on %v", ErrTooLarge, len(pkt), n)
	case overlaps(dst[len(dst):], pkt):
		return from, nil, 0, ErrOverlap
	}
	copy(from[:], pkt)
	p, err := c.lookup(from)
	if err != nil {
		return from, nil, 0, err
	}
	cached := p != nil
	if !cached {
		if p, err = c.newPeer(from, true); err != nil {
			return from, nil, 0, err
		}
	}
	if v3 && len(pkt) >= MinV3 {
		var nonce cryptobox.Nonce
		copy(nonce[:], pkt[IDSize:])
		if plain, err := p.key.Open(dst, pkt[IDSize+NonceSize:], &nonce); err == nil {
			p.mu.Lock()
			replay := p.hasLast && p.last == nonce
			p.last, p.hasLast = nonce, true
			p.mu.Unlock()
			if replay {
				return from, nil, 0, ErrReplay
			}
			if !cached {
				if _, err := c.admit(p); err != nil {
					return from, nil, 0, err
				}
			}
			return from, plain, FramingV3, nil
		}
	}
	if v2 {
		if plain, err := p.key.Open(dst, pkt[IDSize:], &p.v2nonce); err == nil {
			if !cached {
				if _, err := c.admit(p); err != nil {
					return from, nil, 0, err
				}
			}
			return from, plain, FramingV2, nil
		}
	}
	return from, nil, 0, ErrAuth
}

// Pool hands out receive and send buffers of BufferSize bytes, so a node's
// hot path does not allocate per datagram.
var pool = sync.Pool{New: func() any { return new([BufferSize]byte) }}

// GetBuffer returns a buffer from the pool.
func GetBuffer() *[BufferSize]byte { return pool.Get().(*[BufferSize]byte) }

// PutBuffer returns a buffer to the pool. The caller must not use it after.
func PutBuffer(b *[BufferSize]byte) { pool.Put(b) }
