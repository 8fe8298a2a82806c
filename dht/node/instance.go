package node

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/core/udpserver"
	"github.com/elacity/pc2/dht/internal/cbor"
	"github.com/elacity/pc2/dht/lookup"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/record"
	"github.com/elacity/pc2/dht/routing"
	"github.com/elacity/pc2/dht/storage"
)

// instance is the node on one address family: its sockets, routing table
// and outstanding calls (boson.md §2.1: IPv4 and IPv6 are separate DHTs).
type instance struct {
	n     *Node
	fam   packet.Network
	srv   *udpserver.Server
	local netip.AddrPort

	tmu      sync.RWMutex
	table    *routing.Table
	timeouts *lookup.Timeouts

	pmu     sync.Mutex
	pending map[uint32]*call
	txid    uint32
	rng     *rand.ChaCha8

	verified *addrSet

	cmu        sync.Mutex
	challenges map[netip.AddrPort]*challenge

	wake chan struct{}
	sem  chan struct{} // bounds background pings
}

// Bounds of the per-instance state.
const (
	maxPending       = 4096
	maxChallenges    = 1024
	maxQueuedPerAddr = 4
	maxBackground    = 32
	verifiedTTL      = 30 * time.Minute
)

func newInstance(n *Node, fam packet.Network) *instance {
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rand.Uint32())
	}
	in := &instance{
		n:   n,
		fam: fam,
		table: routing.New(routing.Config{
			Self:          n.self.ID(),
			K:             n.cfg.K,
			DeveloperMode: n.cfg.DeveloperMode,
		}),
		pending:    map[uint32]*call{},
		rng:        rand.NewChaCha8(seed),
		verified:   newAddrSet(1<<16, verifiedTTL),
		challenges: map[netip.AddrPort]*challenge{},
		wake:       make(chan struct{}, 1),
		sem:        make(chan struct{}, maxBackground),
	}
	in.txid = uint32(in.rng.Uint64()) & 0x7fffffff
	in.timeouts = lookup.NewTimeouts(in.peerRTT)
	return in
}

func listenUDP(network, addr string, workers int, h udpserver.Handler) (*udpserver.Server, error) {
	return udpserver.Listen(udpserver.Config{
		Network:   network,
		Addr:      addr,
		Workers:   workers,
		MaxPacket: packet.BufferSize - 1,
	}, h)
}

// scratch is the per-datagram working memory, pooled.
type scratch struct {
	plain    [packet.BufferSize]byte
	body     [packet.BufferSize]byte
	req      message.Message
	reply    message.Message
	contacts []routing.Contact
	peers    []record.PeerInfo
	peers2   []record.PeerInfoV2
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func dialectOf(f packet.Framing) message.Dialect {
	if f == packet.FramingV2 {
		return message.V2
	}
	return message.V3
}

func overhead(f packet.Framing) int {
	if f == packet.FramingV2 {
		return packet.OverheadV2
	}
	return packet.OverheadV3
}

// ServeDatagram handles one datagram received from `from` exactly as the
// UDP server does, and returns the answer to send back (nil for none).
// It exists for tests and fuzzing of the whole request path.
func (n *Node) ServeDatagram(out, pkt []byte, from netip.AddrPort) []byte {
	in := n.instanceFor(from)
	if in == nil {
		return nil
	}
	return in.ServeUDP(out, pkt, from)
}

// ServeUDP handles one inbound datagram (udpserver.Handler).
func (in *instance) ServeUDP(out, pkt []byte, from netip.AddrPort) []byte {
	n := in.n
	if !n.ready.Load() {
		return nil // Start is still setting up the families
	}
	from = unmap(from)
	n.m.bytesIn.Add(float64(len(pkt)))
	switch {
	case len(pkt) < packet.MinV2:
		n.m.drop(dropShort)
		return nil
	case len(pkt) > in.fam.MaxInbound():
		n.m.drop(dropLarge)
		return nil
	}
	now := time.Now()
	if !n.allowIn(from, now) {
		n.m.drop(dropRateLimit)
		return nil
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	var (
		id    identity.ID
		plain []byte
		fr    = packet.FramingV3
		err   error
	)
	if n.compat {
		id, plain, fr, err = n.codec.OpenAny(sc.plain[:0], pkt, in.fam)
	} else {
		id, plain, err = n.codec.Open(sc.plain[:0], pkt, in.fam)
	}
	if err != nil {
		n.m.drop(openDrop(err))
		return nil
	}
	if fr == packet.FramingV2 && n.dialects.get(id)&speaksV3 != 0 {
		n.m.drop(dropV2FromV3)
		return nil
	}
	n.dialects.mark(id, fr)
	d := dialectOf(fr)
	req := &sc.req
	if err := req.Decode(plain, d); err != nil {
		var de *message.DecodeError
		if errors.As(err, &de) && errors.Is(err, message.ErrUnknownMethod) && de.Type == message.TypeRequest &&
			de.Txid != 0 && de.Txid <= 0x7fffffff {
			body := appendUnknownMethod(sc.body[:0], uint8(de.Method), de.Txid, n.ver)
			return in.sealReply(out, body, id, from, fr, len(pkt))
		}
		n.m.drop(dropDecode)
		return nil
	}
	if req.Type != message.TypeRequest {
		in.deliver(req, id, from, fr)
		return nil
	}
	if !isClientVersion(req.Version) {
		in.learn(id, from, now)
	}
	return in.serve(out, sc, id, from, fr, len(pkt))
}

// appendUnknownMethod writes error 204 for a method the codec cannot
// represent (message.Append refuses unknown methods): y carries the
// failed request's method, as Boson does.
func appendUnknownMethod(b []byte, method uint8, txid uint64, ver int32) []byte {
	b = cbor.AppendMapStart(b)
	b = cbor.AppendText(b, "y")
	b = cbor.AppendUint(b, uint64(method&0x1f))
	b = cbor.AppendText(b, "t")
	b = cbor.AppendUint(b, txid)
	b = cbor.AppendText(b, "e")
	b = cbor.AppendMapStart(b)
	b = cbor.AppendText(b, "c")
	b = cbor.AppendInt(b, message.CodeMethodUnknown)
	b = cbor.AppendBreak(b)
	b = cbor.AppendText(b, "v")
	b = cbor.AppendInt(b, int64(ver))
	return cbor.AppendBreak(b)
}

// serve answers a decoded request held in sc.req.
func (in *instance) serve(out []byte, sc *scratch, id identity.ID, from netip.AddrPort, fr packet.Framing, inLen int) []byte {
	n := in.n
	req := &sc.req
	switch in.handle(sc, id, from, fr) {
	case handledAsync:
		return nil
	case handledDrop:
		return nil
	}
	body, ok := in.encodeReply(sc, dialectOf(fr), fr)
	if !ok {
		n.m.drop(dropInternal)
		return nil
	}
	if overhead(fr)+len(body) > inLen && !in.verified.has(from, time.Now()) {
		// The answer is larger than the request and the address never
		// completed a round trip with us: verify it first.
		if req.Method == message.MethodFindNode || req.Method == message.MethodFindValue ||
			req.Method == message.MethodFindPeer {
			in.challenge(req, id, from, fr, inLen)
			n.m.request(req.Method, outChallenged)
			return nil
		}
		n.m.drop(dropAmplification)
		return nil
	}
	if sc.reply.Type == message.TypeError {
		n.m.request(req.Method, outError)
	} else {
		n.m.request(req.Method, outOK)
	}
	return in.sealReply(out, body, id, from, fr, -1)
}

// sealReply seals body for id onto out. limit >= 0 drops the reply if it
// would exceed limit bytes (the amplification bound for unverified
// addresses).
func (in *instance) sealReply(out, body []byte, id identity.ID, from netip.AddrPort, fr packet.Framing, limit int) []byte {
	if limit >= 0 && overhead(fr)+len(body) > limit && !in.verified.has(from, time.Now()) {
		in.n.m.drop(dropAmplification)
		return nil
	}
	var dgram []byte
	var err error
	if fr == packet.FramingV2 {
		dgram, err = in.n.codec.SealV2(out[:0], id, body, in.fam)
	} else {
		dgram, err = in.n.codec.Seal(out[:0], id, body, in.fam)
	}
	if err != nil {
		in.n.m.drop(dropInternal)
		return nil
	}
	in.n.m.bytesOut.Add(float64(len(dgram)))
	return dgram
}

type handled uint8

const (
	handledReply handled = iota // sc.reply holds the answer
	handledAsync                // the answer is sent after a durable write
	handledDrop                 // no answer
)

// handle fills sc.reply with the answer to sc.req.
func (in *instance) handle(sc *scratch, id identity.ID, from netip.AddrPort, fr packet.Framing) handled {
	n := in.n
	req, reply := &sc.req, &sc.reply
	d := dialectOf(fr)
	now := n.clock.Now()
	reply.Respond(req)
	reply.Version = n.ver
	switch req.Method {
	case message.MethodPing:
	case message.MethodFindNode:
		in.fillNodes(sc, req.Target, req.Want)
		if req.Want&message.WantToken != 0 {
			reply.Token = n.tokens.Issue(id, from, req.Target, now)
		}
	case message.MethodFindValue:
		v, ok := n.store.Value(req.Target, d == message.V2, now)
		if ok && valueWanted(&v, req, d) {
			reply.Value, reply.HasValue = v, true
		} else {
			in.fillNodes(sc, req.Target, req.Want)
			if d == message.V3 && len(reply.Nodes4) == 0 && len(reply.Nodes6) == 0 {
				// 3.x cannot express "no value, no nodes" (a response
				// must carry one or the other): say so with an error.
				return in.fail(sc, message.CodeGeneric, "no value and no verified nodes")
			}
		}
		if d == message.V2 { // v2 returns a token with every FIND_VALUE
			reply.Token = n.tokens.Issue(id, from, req.Target, now)
		}
	case message.MethodFindPeer:
		if d == message.V2 {
			sc.peers2 = n.store.PeersV2(sc.peers2, req.Target, message.MaxPeersPerResponse, now)
			if len(sc.peers2) > 0 {
				reply.PeersV2 = append(reply.PeersV2[:0], sc.peers2...)
			} else {
				in.fillNodes(sc, req.Target, req.Want)
			}
			reply.Token = n.tokens.Issue(id, from, req.Target, now)
			break
		}
		count := int(req.Count)
		if count <= 0 || count > message.MaxPeersPerResponse {
			count = message.DefaultPeerCount
		}
		cas := int32(-1)
		if req.HasCAS && req.CAS >= 0 {
			cas = req.CAS
		}
		sc.peers = n.store.Peers(sc.peers, req.Target, cas, count, now)
		if len(sc.peers) > 0 {
			reply.Peers = append(reply.Peers[:0], sc.peers...)
		} else {
			in.fillNodes(sc, req.Target, req.Want)
		}
	case message.MethodStoreValue:
		return in.store(sc, id, from, fr, now)
	case message.MethodAnnouncePeer:
		return in.announce(sc, id, from, fr, now)
	}
	return handledReply
}

// valueWanted applies the cas (v3) or seq (v2) condition of FIND_VALUE.
func valueWanted(v *record.Value, req *message.Message, d message.Dialect) bool {
	if !v.Mutable() || !req.HasCAS || req.CAS < 0 {
		return true
	}
	return v.Seq >= req.CAS // v3: stored seq >= cas; v2: query seq <= stored seq
}

func (in *instance) fail(sc *scratch, code int32, text string) handled {
	sc.reply.Fail(&sc.req, code, text)
	sc.reply.Version = in.n.ver
	return handledReply
}

// tokenCode is the error for a bad token: 400 in v3, 203 in v2.
func tokenCode(d message.Dialect) int32 {
	if d == message.V2 {
		return message.CodeProtocol
	}
	return message.CodeInvalidToken
}

// invalidCode maps a validation failure: 401/402 in v3; v2 has no such
// codes and answers 206 for a bad signature, 203 otherwise.
func invalidCode(d message.Dialect, err error, v3code int32) int32 {
	if d == message.V3 {
		return v3code
	}
	if errors.Is(err, record.ErrSignature) {
		return message.CodeInvalidSignature
	}
	return message.CodeProtocol
}

func (in *instance) store(sc *scratch, id identity.ID, from netip.AddrPort, fr packet.Framing, now time.Time) handled {
	req := &sc.req
	d := dialectOf(fr)
	e := storage.Entry{Kind: storage.KindValue, Value: req.Value}
	target := req.Value.ID()
	if d == message.V2 {
		e.Kind = storage.KindValueV2
		target = req.Value.IDV2()
	}
	if !in.n.tokens.Valid(req.Token, id, from, target, now) {
		return in.fail(sc, tokenCode(d), "invalid token")
	}
	var err error
	if d == message.V2 {
		err = req.Value.ValidateV2()
	} else {
		err = req.Value.Validate()
	}
	if err != nil {
		return in.fail(sc, invalidCode(d, err, message.CodeInvalidValue), "invalid value")
	}
	return in.submit(sc, e, id, from, fr)
}

func (in *instance) announce(sc *scratch, id identity.ID, from netip.AddrPort, fr packet.Framing, now time.Time) handled {
	req := &sc.req
	d := dialectOf(fr)
	if !in.n.cfg.DeveloperMode && !routing.IsGlobal(from.Addr()) {
		in.n.m.drop(dropNonGlobal) // boson.md §2.6: silently ignored
		return handledDrop
	}
	var e storage.Entry
	var err error
	if d == message.V2 {
		e = storage.Entry{Kind: storage.KindPeerV2, PeerV2: req.AnnouncedPeerV2(id)}
		if !in.n.tokens.Valid(req.Token, id, from, e.PeerV2.ID, now) {
			return in.fail(sc, tokenCode(d), "invalid token")
		}
		err = e.PeerV2.Validate()
	} else {
		e = storage.Entry{Kind: storage.KindPeer, Peer: req.Peer}
		if !in.n.tokens.Valid(req.Token, id, from, e.Peer.ID, now) {
			return in.fail(sc, tokenCode(d), "invalid token")
		}
		err = e.Peer.Validate()
	}
	if err != nil {
		return in.fail(sc, invalidCode(d, err, message.CodeInvalidPeer), "invalid peer")
	}
	return in.submit(sc, e, id, from, fr)
}

// submit queues a validated record for the durable write; the answer is
// sent by the writer once the outcome is on disk.
func (in *instance) submit(sc *scratch, e storage.Entry, id identity.ID, from netip.AddrPort, fr packet.Framing) handled {
	req := &sc.req
	cas := int32(-1)
	if req.HasCAS && req.CAS >= 0 {
		cas = req.CAS
	}
	method, txid := req.Method, req.Txid
	op := &storage.Op{Entry: e.Clone(), CAS: cas}
	op.Done = func(err error) {
		var m message.Message
		m.Type, m.Method, m.Txid, m.Version = message.TypeResponse, method, txid, in.n.ver
		if err != nil {
			code := message.StoreErrorCode(err)
			if errors.Is(err, storage.ErrFull) {
				code = message.CodeServer
			}
			m.Type, m.Err = message.TypeError, message.Error{Code: code, Message: "not stored"}
		}
		in.n.m.request(method, outAsync)
		in.sendMessage(&m, id, from, fr)
	}
	if err := in.n.store.Submit(op); err != nil {
		in.n.m.drop(dropStoreBusy)
		return in.fail(sc, message.CodeServer, "busy")
	}
	return handledAsync
}

// sendMessage encodes, seals and sends m to id at addr.
func (in *instance) sendMessage(m *message.Message, id identity.ID, addr netip.AddrPort, fr packet.Framing) error {
	body := packet.GetBuffer()
	defer packet.PutBuffer(body)
	out := packet.GetBuffer()
	defer packet.PutBuffer(out)
	b, err := m.Append(body[:0], dialectOf(fr))
	if err != nil {
		return err
	}
	var dgram []byte
	if fr == packet.FramingV2 {
		dgram, err = in.n.codec.SealV2(out[:0], id, b, in.fam)
	} else {
		dgram, err = in.n.codec.Seal(out[:0], id, b, in.fam)
	}
	if err != nil {
		return err
	}
	in.n.m.bytesOut.Add(float64(len(dgram)))
	return in.srv.WriteTo(dgram, addr)
}

// fillNodes puts the verified contacts closest to target into the reply,
// for the families the want bits ask for (the instance's own when none).
func (in *instance) fillNodes(sc *scratch, target identity.ID, want message.Want) {
	n := in.n
	if want&(message.WantIPv4|message.WantIPv6) == 0 {
		if in.fam == packet.IPv6 {
			want |= message.WantIPv6
		} else {
			want |= message.WantIPv4
		}
	}
	k := min(n.cfg.K, message.MaxNodesPerResponse)
	for _, x := range n.inst {
		var list *[]message.NodeInfo
		switch {
		case x.fam == packet.IPv4 && want&message.WantIPv4 != 0:
			list = &sc.reply.Nodes4
		case x.fam == packet.IPv6 && want&message.WantIPv6 != 0:
			list = &sc.reply.Nodes6
		default:
			continue
		}
		x.tmu.RLock()
		sc.contacts = x.table.Closest(sc.contacts, target, k, true)
		x.tmu.RUnlock()
		*list = (*list)[:0]
		for _, c := range sc.contacts {
			ni := message.NodeInfo{ID: c.ID}
			if x.fam == packet.IPv6 {
				ni.Addr6 = c.Addr
			} else {
				ni.Addr4 = c.Addr
			}
			*list = append(*list, ni)
		}
	}
}

// encodeReply encodes sc.reply, dropping peers and nodes from the end
// until it fits one datagram; a reply that cannot fit becomes error 205.
func (in *instance) encodeReply(sc *scratch, d message.Dialect, fr packet.Framing) ([]byte, bool) {
	r := &sc.reply
	limit := in.fam.MaxPacket() - overhead(fr)
	failed := false
	for {
		body, err := r.Append(sc.body[:0], d)
		if err != nil {
			return nil, false
		}
		if len(body) <= limit {
			return body, true
		}
		switch {
		case len(r.Peers) > 1:
			r.Peers = r.Peers[:len(r.Peers)-1]
		case len(r.PeersV2) > 1:
			r.PeersV2 = r.PeersV2[:len(r.PeersV2)-1]
		case len(r.Nodes4) > 0 && len(r.Nodes4) >= len(r.Nodes6):
			r.Nodes4 = r.Nodes4[:len(r.Nodes4)-1]
		case len(r.Nodes6) > 0:
			r.Nodes6 = r.Nodes6[:len(r.Nodes6)-1]
		case !failed:
			failed = true
			r.Fail(&sc.req, message.CodeMessageTooBig, "message too big")
			r.Version = in.n.ver
		default:
			return nil, false
		}
	}
}

// learn offers a requester to the routing table as unverified: the table
// pings it before handing it out. The sign twin of a known id is refused
// (both share one box key, so one key holder could occupy two slots).
func (in *instance) learn(id identity.ID, from netip.AddrPort, now time.Time) {
	if routing.Routable(from, in.n.cfg.DeveloperMode) != nil {
		return
	}
	in.tmu.RLock()
	_, known := in.table.Get(id)
	_, twin := in.table.Get(twinOf(id))
	in.tmu.RUnlock()
	if known || twin {
		return
	}
	in.tmu.Lock()
	o, _ := in.table.AddUnverified(routing.Contact{ID: id, Addr: from}, now)
	in.tmu.Unlock()
	if o == routing.Added {
		select {
		case in.wake <- struct{}{}:
		default:
		}
	}
}

// challenge holds a request from an unverified address and pings the
// address; the request is answered when the ping is.
type challenge struct {
	queue []queued
}

type queued struct {
	req   *message.Message
	id    identity.ID
	fr    packet.Framing
	inLen int
}

func (in *instance) challenge(req *message.Message, id identity.ID, from netip.AddrPort, fr packet.Framing, inLen int) {
	in.cmu.Lock()
	c := in.challenges[from]
	if c == nil {
		if len(in.challenges) >= maxChallenges {
			in.cmu.Unlock()
			in.n.m.drop(dropAmplification)
			return
		}
		c = &challenge{}
		in.challenges[from] = c
		if !in.n.spawn(func() { in.runChallenge(id, from, fr) }) {
			delete(in.challenges, from)
			in.cmu.Unlock()
			return
		}
		in.n.m.challenges.Inc()
	}
	if len(c.queue) < maxQueuedPerAddr {
		c.queue = append(c.queue, queued{req: req.Clone(), id: id, fr: fr, inLen: inLen})
	}
	in.cmu.Unlock()
}

func (in *instance) runChallenge(id identity.ID, from netip.AddrPort, fr packet.Framing) {
	ctx := in.n.ctx
	var ping message.Message
	ping.Type, ping.Method = message.TypeRequest, message.MethodPing
	_, err := in.roundTrip(ctx, routing.Contact{ID: id, Addr: from}, &ping, fr, in.timeouts.Timeout(routing.Contact{ID: id, Addr: from})+time.Second)
	in.cmu.Lock()
	c := in.challenges[from]
	delete(in.challenges, from)
	in.cmu.Unlock()
	if err != nil || c == nil {
		return
	}
	out := packet.GetBuffer()
	defer packet.PutBuffer(out)
	for _, q := range c.queue {
		sc := scratchPool.Get().(*scratch)
		sc.req = *q.req
		if reply := in.serve(out[:0], sc, q.id, from, q.fr, q.inLen); len(reply) > 0 {
			in.srv.WriteTo(reply, from)
		}
		sc.req = message.Message{}
		scratchPool.Put(sc)
	}
}
