package message

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/record"
)

// Dialect selects the body field set of an encoder or decoder.
type Dialect uint8

const (
	// V3 is Boson 3.1, PC2's native dialect.
	V3 Dialect = iota
	// V2 is Boson 2.0.x / Carrier 2.0.4, spoken by today's public network.
	V2
)

func (d Dialect) String() string {
	if d == V2 {
		return "v2"
	}
	return "v3"
}

// Type is the message type, bits 7..5 of "y".
type Type uint8

// Message types.
const (
	TypeError    Type = 0x00
	TypeRequest  Type = 0x20
	TypeResponse Type = 0x40
)

func (t Type) String() string {
	switch t {
	case TypeError:
		return "error"
	case TypeRequest:
		return "request"
	case TypeResponse:
		return "response"
	}
	return fmt.Sprintf("type(%#x)", uint8(t))
}

// Method is the RPC method, bits 4..0 of "y".
type Method uint8

// Methods.
const (
	MethodPing         Method = 1
	MethodFindNode     Method = 2
	MethodAnnouncePeer Method = 3
	MethodFindPeer     Method = 4
	MethodStoreValue   Method = 5
	MethodFindValue    Method = 6
)

func (m Method) String() string {
	switch m {
	case MethodPing:
		return "ping"
	case MethodFindNode:
		return "find_node"
	case MethodAnnouncePeer:
		return "announce_peer"
	case MethodFindPeer:
		return "find_peer"
	case MethodStoreValue:
		return "store_value"
	case MethodFindValue:
		return "find_value"
	}
	return fmt.Sprintf("method(%d)", uint8(m))
}

func (m Method) valid() bool { return m >= MethodPing && m <= MethodFindValue }

// isLookup reports whether the method's request is {t, w, ...}.
func (m Method) isLookup() bool {
	return m == MethodFindNode || m == MethodFindValue || m == MethodFindPeer
}

// Want is the "w" bit mask of lookup requests.
type Want uint8

// Want bits.
const (
	WantIPv4  Want = 1
	WantIPv6  Want = 2
	WantToken Want = 4
	wantAll        = WantIPv4 | WantIPv6 | WantToken
)

// Error codes of the "c" field (boson.md §2.6).
const (
	CodeGeneric               = 201
	CodeServer                = 202
	CodeProtocol              = 203
	CodeMethodUnknown         = 204
	CodeMessageTooBig         = 205
	CodeInvalidSignature      = 206
	CodeSaltTooBig            = 207
	CodeCASFail               = 301
	CodeSeqNotMonotonic       = 302
	CodeImmutableSubstitution = 303
	CodeInvalidToken          = 400 // v3 only; v2 answers a bad token with 203
	CodeInvalidValue          = 401 // v3 only
	CodeInvalidPeer           = 402 // v3 only
)

// StoreErrorCode maps an error of the record store rules to its wire code,
// or CodeServer for anything else.
func StoreErrorCode(err error) int32 {
	switch {
	case errors.Is(err, record.ErrCASFail):
		return CodeCASFail
	case errors.Is(err, record.ErrSeqNotMonotonic):
		return CodeSeqNotMonotonic
	case errors.Is(err, record.ErrImmutableSubstitution):
		return CodeImmutableSubstitution
	case errors.Is(err, record.ErrAuthDowngrade):
		return CodeInvalidPeer
	}
	return CodeServer
}

// Limits the decoder enforces on counts. They bound memory, not protocol
// policy: a response carries at most 16 nodes per family and 8 peers
// (MaxNodesPerResponse, MaxPeersPerResponse), which the node checks, and a
// datagram cannot physically hold much more than these caps.
const (
	maxNodesPerList = 64
	maxPeersPerList = 32
)

// Protocol limits the node applies to responses (boson.md §3).
const (
	MaxNodesPerResponse          = 16 // per family
	MaxNodesPerSourcePerResponse = 8  // per IPv4 address or IPv6 /64
	MaxPeersPerResponse          = 8
	DefaultPeerCount             = 8 // FIND_PEER "e" absent or 0
)

// Error is the body of an error message.
type Error struct {
	Code    int32  // c
	Message string // m, may be empty
}

// Message is one DHT message of any type and method. It is a flat union: the
// fields that apply depend on Type and Method, as noted on each. A Message is
// meant to be reused (Reset keeps the capacity of its lists), and after
// Decode its byte slices alias the decoded buffer: Clone it to keep it
// longer than the buffer.
type Message struct {
	Type    Type
	Method  Method
	Txid    uint64 // t: non-zero; a response echoes the request's
	Version int32  // v: software version, omitted when 0 (see MakeVersion)

	// Lookup requests (FIND_NODE, FIND_VALUE, FIND_PEER).
	Target identity.ID // q.t
	Want   Want        // q.w

	// CAS is the expected sequence number: q.cas of FIND_VALUE, FIND_PEER,
	// STORE_VALUE and ANNOUNCE_PEER in v3; q.seq of FIND_VALUE and q.cas of
	// STORE_VALUE in v2. It is on the wire only when HasCAS.
	CAS    int32
	HasCAS bool

	// Count is q.e of a v3 FIND_PEER: the number of peers wanted, 0 = default.
	Count int32

	// Token is the write token, 0 = none: q.tok of STORE_VALUE and
	// ANNOUNCE_PEER; r.tok of FIND_NODE (and in v2 of FIND_VALUE, FIND_PEER).
	Token int32

	// Nodes4 and Nodes6 are r.n4 and r.n6 of lookup responses.
	Nodes4, Nodes6 []NodeInfo

	// Value is the value of a STORE_VALUE request or a FIND_VALUE response,
	// present when HasValue.
	Value    record.Value
	HasValue bool

	// Peers is r.p of a v3 FIND_PEER response; Peer is the v3 ANNOUNCE_PEER request.
	Peers []record.PeerInfo
	Peer  record.PeerInfo

	// PeersV2 is r.p of a v2 FIND_PEER response (all share one peer id).
	// PeerV2 is a v2 ANNOUNCE_PEER request: ID (t), NodeID (x, zero when the
	// sender announces itself), Port (p), Alt, Sig; Origin is not on the
	// wire (see AnnouncedPeerV2).
	PeersV2 []record.PeerInfoV2
	PeerV2  record.PeerInfoV2

	// Err is the body of an error message.
	Err Error
}

// Y returns the "y" field: type | method.
func (m *Message) Y() uint8 { return uint8(m.Type) | uint8(m.Method) }

// Reset clears m for reuse, keeping the capacity of its lists.
func (m *Message) Reset() {
	n4, n6, ps, ps2 := m.Nodes4[:0], m.Nodes6[:0], m.Peers[:0], m.PeersV2[:0]
	*m = Message{Nodes4: n4, Nodes6: n6, Peers: ps, PeersV2: ps2}
}

// Clone returns a deep copy of m that does not alias any buffer.
func (m *Message) Clone() *Message {
	c := *m
	c.Nodes4 = append([]NodeInfo(nil), m.Nodes4...)
	c.Nodes6 = append([]NodeInfo(nil), m.Nodes6...)
	c.Value = m.Value.Clone()
	c.Peer = m.Peer.Clone()
	c.Peers = make([]record.PeerInfo, len(m.Peers))
	for i := range m.Peers {
		c.Peers[i] = m.Peers[i].Clone()
	}
	c.PeersV2 = append([]record.PeerInfoV2(nil), m.PeersV2...)
	return &c
}

// Equal reports whether m and o carry the same message. Empty and nil
// lists are equal.
func (m *Message) Equal(o *Message) bool {
	if m.Type != o.Type || m.Method != o.Method || m.Txid != o.Txid || m.Version != o.Version ||
		m.Target != o.Target || m.Want != o.Want || m.CAS != o.CAS || m.HasCAS != o.HasCAS ||
		m.Count != o.Count || m.Token != o.Token || m.HasValue != o.HasValue || m.Err != o.Err ||
		m.PeerV2 != o.PeerV2 || !m.Peer.Equal(&o.Peer) || !m.Value.Equal(&o.Value) ||
		len(m.Nodes4) != len(o.Nodes4) || len(m.Nodes6) != len(o.Nodes6) ||
		len(m.Peers) != len(o.Peers) || len(m.PeersV2) != len(o.PeersV2) {
		return false
	}
	for i := range m.Nodes4 {
		if m.Nodes4[i] != o.Nodes4[i] {
			return false
		}
	}
	for i := range m.Nodes6 {
		if m.Nodes6[i] != o.Nodes6[i] {
			return false
		}
	}
	for i := range m.Peers {
		if !m.Peers[i].Equal(&o.Peers[i]) {
			return false
		}
	}
	for i := range m.PeersV2 {
		if m.PeersV2[i] != o.PeersV2[i] {
			return false
		}
	}
	return true
}

// Respond turns m into the empty response to req (same method and txid).
// The caller fills in the body, if the method has one.
func (m *Message) Respond(req *Message) {
	m.Reset()
	m.Type, m.Method, m.Txid = TypeResponse, req.Method, req.Txid
}

// Fail turns m into an error answering req.
func (m *Message) Fail(req *Message, code int32, text string) {
	m.Reset()
	m.Type, m.Method, m.Txid = TypeError, req.Method, req.Txid
	m.Err = Error{Code: code, Message: text}
}

// AnnouncedPeerV2 returns the v2 peer record a v2 ANNOUNCE_PEER from sender
// stores: origin is the sender, and the node id is x or, absent, the sender.
func (m *Message) AnnouncedPeerV2(sender identity.ID) record.PeerInfoV2 {
	p := m.PeerV2
	p.Origin = sender
	if p.NodeID.IsZero() {
		p.NodeID = sender
	}
	return p
}

// MakeVersion builds a "v" field from a two-letter implementation name and
// a version number, e.g. MakeVersion("OR", 1) = 0x4F520001 (Boson's Java node).
func MakeVersion(name string, ver uint16) int32 {
	var a, b byte
	if len(name) > 0 {
		a = name[0]
	}
	if len(name) > 1 {
		b = name[1]
	}
	return int32(uint32(a)<<24 | uint32(b)<<16 | uint32(ver))
}

// VersionString renders a "v" field as name/version, e.g. "OR/1".
func VersionString(v int32) string {
	u := uint32(v)
	name := []byte{byte(u >> 24), byte(u >> 16)}
	for i, c := range name {
		if c < 0x20 || c > 0x7e {
			name[i] = '?'
		}
	}
	return fmt.Sprintf("%s/%d", name, u&0xffff)
}

// String renders a short description for logs.
func (m *Message) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%v %v t=%d", m.Method, m.Type, m.Txid)
	if m.Type == TypeError {
		fmt.Fprintf(&b, " c=%d", m.Err.Code)
	}
	if m.Version != 0 {
		fmt.Fprintf(&b, " v=%s", VersionString(m.Version))
	}
	return b.String()
}

// maxTxid is the largest transaction id a 3.x node parses (a Java long).
const maxTxid = math.MaxInt64
