package message

import (
	"errors"
	"fmt"

	"github.com/elacity/pc2/dht/internal/cbor"
	"github.com/elacity/pc2/dht/record"
)

// Decoding errors, wrapped in a *DecodeError.
var (
	// ErrMalformed means the bytes are not a Boson message.
	ErrMalformed = errors.New("message: malformed")
	// ErrUnknownMethod means a well-formed envelope names a method this
	// codec does not know; the node may answer with CodeMethodUnknown.
	ErrUnknownMethod = errors.New("message: unknown method")
)

// DecodeError reports a message that failed to decode, with whatever of the
// envelope was read before the failure (zero values otherwise), so that a
// node can decide whether and how to answer.
type DecodeError struct {
	Type   Type
	Method Method
	Txid   uint64
	Err    error
}

func (e *DecodeError) Error() string {
	if e.Txid == 0 || !e.Method.valid() {
		return fmt.Sprintf("decode message: %v", e.Err)
	}
	return fmt.Sprintf("decode %v %v t=%d: %v", e.Method, e.Type, e.Txid, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Decode reads one message of dialect d from b into m, replacing its
// content. It accepts definite and indefinite lengths, skips unknown keys,
// treats an explicit null as an absent field, and rejects duplicate keys,
// trailing bytes and (in V3, as Boson 3.x does) a body that comes before
// "y". V2 accepts the envelope keys in any order, as v2 nodes do.
//
// Byte slices in m alias b. Decode allocates only for text fields (peer
// endpoints, error messages) and for node and peer lists beyond the
// capacity m already has; nothing is sized from a length the sender claims.
func (m *Message) Decode(b []byte, d Dialect) error {
	m.Reset()
	if err := m.decode(b, d); err != nil {
		return &DecodeError{Type: m.Type, Method: m.Method, Txid: m.Txid, Err: err}
	}
	return nil
}

// fields tracks which keys of one map were seen (to refuse duplicates) and
// which were present (not null).
type fields struct{ seen, present uint32 }

// mark records key bit; skip is true when the value is an explicit null.
func (f *fields) mark(bit uint32, key []byte, r *cbor.Reader) (skip bool, err error) {
	if f.seen&bit != 0 {
		return false, fmt.Errorf("%w: duplicate key %q", ErrMalformed, key)
	}
	f.seen |= bit
	if r.PeekNull() {
		return true, nil
	}
	f.present |= bit
	return false, nil
}

func (f *fields) has(bit uint32) bool { return f.present&bit != 0 }

const (
	kY uint32 = 1 << iota
	kT
	kBody
	kV
)

func splitY(y uint64) (Type, Method, error) {
	if y > 0x7f || y&0xe0 > uint64(TypeResponse) {
		return 0, 0, fmt.Errorf("%w: y = %#x", ErrMalformed, y)
	}
	return Type(y & 0xe0), Method(y & 0x1f), nil
}

func (m *Message) decode(b []byte, d Dialect) error {
	r := cbor.NewReader(b)
	c, err := r.EnterMap()
	if err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	var f fields
	haveY := false
	for {
		more, err := r.Next(&c)
		if err != nil {
			return fmt.Errorf("envelope: %w", err)
		}
		if !more {
			break
		}
		key, err := r.ReadKey()
		if err != nil {
			return fmt.Errorf("envelope key: %w", err)
		}
		switch k := string(key); k {
		case "y":
			if _, err := f.mark(kY, key, &r); err != nil {
				return err
			}
			y, err := r.ReadUint()
			if err != nil {
				return fmt.Errorf("y: %w", err)
			}
			t, meth, err := splitY(y)
			if err != nil {
				return err
			}
			if haveY && (t != m.Type || meth != m.Method) {
				return fmt.Errorf("%w: y changed", ErrMalformed)
			}
			m.Type, m.Method, haveY = t, meth, true
		case "t":
			if _, err := f.mark(kT, key, &r); err != nil {
				return err
			}
			t, err := r.ReadUint()
			if err != nil {
				return fmt.Errorf("t: %w", err)
			}
			if t == 0 || t > maxTxid {
				return fmt.Errorf("%w: txid %d", ErrMalformed, t)
			}
			m.Txid = t
		case "q", "r", "e":
			if _, err := f.mark(kBody, key, &r); err != nil {
				return err
			}
			if !f.has(kBody) {
				return fmt.Errorf("%w: null %q body", ErrMalformed, k)
			}
			if !haveY {
				if d == V3 {
					return fmt.Errorf("%w: %q before y", ErrMalformed, k)
				}
				if m.Type, m.Method, err = peekY(b); err != nil {
					return err
				}
				haveY = true
			}
			if err := m.decodeBody(&r, k, d); err != nil {
				return err
			}
		case "v":
			skip, err := f.mark(kV, key, &r)
			if err != nil {
				return err
			}
			if !skip {
				if m.Version, err = r.ReadInt32(); err != nil {
					return fmt.Errorf("v: %w", err)
				}
			}
		default:
			if err := r.Skip(); err != nil {
				return fmt.Errorf("envelope key %q: %w", key, err)
			}
		}
	}
	switch {
	case !haveY:
		return fmt.Errorf("%w: no y", ErrMalformed)
	case m.Txid == 0:
		return fmt.Errorf("%w: no t", ErrMalformed)
	case r.Len() != 0:
		return fmt.Errorf("%w: %d bytes after the message", ErrMalformed, r.Len())
	case !m.Method.valid():
		return ErrUnknownMethod
	case !f.has(kBody) && m.hasBody():
		return fmt.Errorf("%w: %v %v without body", ErrMalformed, m.Method, m.Type)
	}
	return nil
}

// hasBody reports whether the message type and method carry q, r or e.
func (m *Message) hasBody() bool {
	switch m.Type {
	case TypeRequest:
		return m.Method != MethodPing
	case TypeResponse:
		return m.Method == MethodFindNode || m.Method == MethodFindValue || m.Method == MethodFindPeer
	}
	return true
}

// peekY finds "y" in the top-level map of b, for v2 messages that put the
// body first (native v2 nodes write sorted keys).
func peekY(b []byte) (Type, Method, error) {
	r := cbor.NewReader(b)
	c, err := r.EnterMap()
	if err != nil {
		return 0, 0, err
	}
	for {
		more, err := r.Next(&c)
		if err != nil {
			return 0, 0, err
		}
		if !more {
			return 0, 0, fmt.Errorf("%w: no y", ErrMalformed)
		}
		key, err := r.ReadKey()
		if err != nil {
			return 0, 0, err
		}
		if string(key) == "y" {
			y, err := r.ReadUint()
			if err != nil {
				return 0, 0, fmt.Errorf("y: %w", err)
			}
			return splitY(y)
		}
		if err := r.Skip(); err != nil {
			return 0, 0, err
		}
	}
}

func (m *Message) decodeBody(r *cbor.Reader, key string, d Dialect) error {
	want := "e"
	switch m.Type {
	case TypeRequest:
		want = "q"
	case TypeResponse:
		want = "r"
	}
	if key != want {
		return fmt.Errorf("%w: %q body in a %v", ErrMalformed, key, m.Type)
	}
	if !m.Method.valid() {
		return r.Skip() // reported once the envelope is read
	}
	if !m.hasBody() {
		return fmt.Errorf("%w: %v %v has no body", ErrMalformed, m.Method, m.Type)
	}
	c, err := r.EnterMap()
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	switch m.Type {
	case TypeRequest:
		err = m.decodeRequest(r, &c, d)
	case TypeResponse:
		err = m.decodeResponse(r, &c, d)
	default:
		err = m.decodeError(r, &c)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

// eachKey calls fn for every key of a map until the map ends.
func eachKey(r *cbor.Reader, c *cbor.Container, fn func(key []byte) error) error {
	for {
		more, err := r.Next(c)
		if err != nil || !more {
			return err
		}
		key, err := r.ReadKey()
		if err != nil {
			return fmt.Errorf("key: %w", err)
		}
		if err := fn(key); err != nil {
			return err
		}
	}
}

// Body key bits.
const (
	bT uint32 = 1 << iota
	bW
	bCAS
	bE
	bTok
	bX
	bP
	bAlt
	bSig
	bN4
	bN6
	bC
	bM
)

func readCAS(r *cbor.Reader, m *Message) error {
	v, err := r.ReadInt32()
	if err != nil {
		return fmt.Errorf("cas: %w", err)
	}
	if v >= 0 { // Boson reads a negative cas as none
		m.CAS, m.HasCAS = v, true
	}
	return nil
}

func (m *Message) decodeRequest(r *cbor.Reader, c *cbor.Container, d Dialect) error {
	var f fields
	switch {
	case m.Method.isLookup():
		err := eachKey(r, c, func(key []byte) error {
			var bit uint32
			switch string(key) {
			case "t":
				bit = bT
			case "w":
				bit = bW
			case "cas":
				if d == V3 && m.Method != MethodFindNode {
					bit = bCAS
				}
			case "seq":
				if d == V2 && m.Method == MethodFindValue {
					bit = bCAS
				}
			case "e":
				if d == V3 && m.Method == MethodFindPeer {
					bit = bE
				}
			}
			if bit == 0 {
				return r.Skip()
			}
			if skip, err := f.mark(bit, key, r); err != nil || skip {
				return err
			}
			switch bit {
			case bT:
				b, err := r.ReadBytes()
				if err != nil {
					return fmt.Errorf("target: %w", err)
				}
				if len(b) != len(m.Target) {
					return fmt.Errorf("%w: target is %d bytes", ErrMalformed, len(b))
				}
				copy(m.Target[:], b)
			case bW:
				w, err := r.ReadUint()
				if err != nil {
					return fmt.Errorf("want: %w", err)
				}
				if d == V3 && w > uint64(wantAll) {
					return fmt.Errorf("%w: want %d", ErrMalformed, w)
				}
				m.Want = Want(w) & wantAll // v2 masks the bits it knows
			case bCAS:
				return readCAS(r, m)
			case bE:
				n, err := r.ReadInt32()
				if err != nil {
					return fmt.Errorf("expected count: %w", err)
				}
				m.Count = n
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !f.has(bT) || !f.has(bW) {
			return fmt.Errorf("%w: lookup without t or w", ErrMalformed)
		}
		return nil

	case m.Method == MethodStoreValue:
		// This loop and announce_peer's differ only in the record decoder.
		// Sharing them through an interface makes the decoder escape to the
		// heap (TestZeroAllocHotPath fails), so they stay written twice.
		vd := record.ValueDecoder{V: &m.Value}
		err := eachKey(r, c, func(key []byte) error {
			var bit uint32
			switch string(key) {
			case "tok":
				bit = bTok
			case "cas":
				bit = bCAS
			default:
				ok, err := vd.Field(key, r)
				if ok || err != nil {
					return err
				}
				return r.Skip()
			}
			if skip, err := f.mark(bit, key, r); err != nil || skip {
				return err
			}
			if bit == bCAS {
				return readCAS(r, m)
			}
			t, err := r.ReadInt32()
			if err != nil {
				return fmt.Errorf("tok: %w", err)
			}
			m.Token = t
			return nil
		})
		if err != nil {
			return err
		}
		if d == V3 && !f.has(bTok) {
			return fmt.Errorf("%w: store_value without token", ErrMalformed)
		}
		if !vd.Present() {
			return fmt.Errorf("%w: store_value without value", ErrMalformed)
		}
		if err := vd.Finish(); err != nil {
			return err
		}
		m.HasValue = true
		return nil

	case d == V3: // announce_peer
		pd := record.PeerDecoder{P: &m.Peer, IDKey: "k"}
		err := eachKey(r, c, func(key []byte) error {
			var bit uint32
			switch string(key) {
			case "tok":
				bit = bTok
			case "cas":
				bit = bCAS
			default:
				ok, err := pd.Field(key, r)
				if ok || err != nil {
					return err
				}
				return r.Skip()
			}
			if skip, err := f.mark(bit, key, r); err != nil || skip {
				return err
			}
			if bit == bCAS {
				return readCAS(r, m)
			}
			t, err := r.ReadInt32()
			if err != nil {
				return fmt.Errorf("tok: %w", err)
			}
			m.Token = t
			return nil
		})
		if err != nil {
			return err
		}
		if !f.has(bTok) {
			return fmt.Errorf("%w: announce_peer without token", ErrMalformed)
		}
		return pd.Finish(true)

	default: // v2 announce_peer: {tok, t, x?, p, alt?, sig}
		p := &m.PeerV2
		err := eachKey(r, c, func(key []byte) error {
			var bit uint32
			switch string(key) {
			case "tok":
				bit = bTok
			case "t":
				bit = bT
			case "x":
				bit = bX
			case "p":
				bit = bP
			case "alt":
				bit = bAlt
			case "sig":
				bit = bSig
			default:
				return r.Skip()
			}
			if skip, err := f.mark(bit, key, r); err != nil || skip {
				return err
			}
			var err error
			switch bit {
			case bTok:
				m.Token, err = r.ReadInt32()
			case bT:
				p.ID, err = record.ReadID(r, "peer id (t)")
			case bX:
				p.NodeID, err = record.ReadID(r, "node id (x)")
			case bP:
				p.Port, err = readPort(r)
			case bAlt:
				p.Alt, err = readAlt(r)
			case bSig:
				err = record.ReadSignature(r, &p.Sig, "sig")
			}
			return err
		})
		if err != nil {
			return err
		}
		if !f.has(bT) || !f.has(bP) || !f.has(bSig) {
			return fmt.Errorf("%w: v2 announce_peer without t, p or sig", ErrMalformed)
		}
		return nil
	}
}

func readPort(r *cbor.Reader) (uint16, error) {
	p, err := r.ReadUint()
	if err != nil {
		return 0, fmt.Errorf("port: %w", err)
	}
	if p == 0 || p > 0xffff {
		return 0, fmt.Errorf("%w: port %d", ErrMalformed, p)
	}
	return uint16(p), nil
}

const maxAlt = 1024

func readAlt(r *cbor.Reader) (string, error) {
	s, err := r.ReadText()
	if err != nil {
		return "", fmt.Errorf("alt: %w", err)
	}
	if len(s) > maxAlt {
		return "", fmt.Errorf("%w: alt is %d bytes", ErrMalformed, len(s))
	}
	return record.NFC(string(s)), nil
}

func (m *Message) decodeResponse(r *cbor.Reader, c *cbor.Container, d Dialect) error {
	var f fields
	vd := record.ValueDecoder{V: &m.Value}
	err := eachKey(r, c, func(key []byte) error {
		var bit uint32
		switch string(key) {
		case "n4":
			bit = bN4
		case "n6":
			bit = bN6
		case "tok":
			if m.Method == MethodFindNode || d == V2 {
				bit = bTok
			}
		case "p":
			if m.Method == MethodFindPeer {
				bit = bP
			}
		default:
			if m.Method == MethodFindValue {
				ok, err := vd.Field(key, r)
				if ok || err != nil {
					return err
				}
			}
		}
		if bit == 0 {
			return r.Skip()
		}
		if skip, err := f.mark(bit, key, r); err != nil || skip {
			return err
		}
		var err error
		switch bit {
		case bN4:
			m.Nodes4, err = readNodes(r, m.Nodes4)
		case bN6:
			m.Nodes6, err = readNodes(r, m.Nodes6)
		case bTok:
			m.Token, err = r.ReadInt32()
		case bP:
			if d == V2 {
				err = m.readPeersV2(r)
			} else {
				err = m.readPeers(r)
			}
		}
		return err
	})
	if err != nil {
		return err
	}
	if vd.Present() {
		if err := vd.Finish(); err != nil {
			return err
		}
		m.HasValue = true
	} else if m.Method == MethodFindValue && d == V3 && !f.has(bN4) && !f.has(bN6) {
		return fmt.Errorf("%w: find_value response with neither value nor nodes", ErrMalformed)
	}
	return nil
}

func (m *Message) readPeers(r *cbor.Reader) error {
	c, err := r.EnterArray()
	if err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	for n := 0; ; n++ {
		more, err := r.Next(&c)
		if err != nil {
			return fmt.Errorf("peers: %w", err)
		}
		if !more {
			return nil
		}
		if n == maxPeersPerList {
			return fmt.Errorf("%w: more than %d peers", ErrMalformed, maxPeersPerList)
		}
		m.Peers = append(m.Peers, record.PeerInfo{})
		if err := m.Peers[len(m.Peers)-1].DecodeFrom(r); err != nil {
			return fmt.Errorf("peer %d: %w", n, err)
		}
	}
}

// next advances to the next item of an array that must have one.
func next(r *cbor.Reader, c *cbor.Container, what string) error {
	more, err := r.Next(c)
	if err != nil {
		return err
	}
	if !more {
		return fmt.Errorf("%w: %s missing", ErrMalformed, what)
	}
	return nil
}

// readPeersV2 reads p = [peerId, [nodeId, origin|null, port, alt|null, sig], ...].
func (m *Message) readPeersV2(r *cbor.Reader) error {
	c, err := r.EnterArray()
	if err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	if err := next(r, &c, "peer id"); err != nil {
		return err
	}
	id, err := record.ReadID(r, "peer id")
	if err != nil {
		return err
	}
	for n := 0; ; n++ {
		more, err := r.Next(&c)
		if err != nil {
			return fmt.Errorf("peers: %w", err)
		}
		if !more {
			return nil
		}
		if n == maxPeersPerList {
			return fmt.Errorf("%w: more than %d peers", ErrMalformed, maxPeersPerList)
		}
		p := record.PeerInfoV2{ID: id}
		ec, err := r.EnterArray()
		if err != nil {
			return fmt.Errorf("peer %d: %w", n, err)
		}
		if err := next(r, &ec, "node id"); err != nil {
			return err
		}
		if p.NodeID, err = record.ReadID(r, "node id"); err != nil {
			return err
		}
		if err := next(r, &ec, "origin"); err != nil {
			return err
		}
		p.Origin = p.NodeID
		if !r.PeekNull() {
			if p.Origin, err = record.ReadID(r, "origin"); err != nil {
				return err
			}
		}
		if err := next(r, &ec, "port"); err != nil {
			return err
		}
		if p.Port, err = readPort(r); err != nil {
			return err
		}
		if err := next(r, &ec, "alt"); err != nil {
			return err
		}
		if !r.PeekNull() {
			if p.Alt, err = readAlt(r); err != nil {
				return err
			}
		}
		if err := next(r, &ec, "signature"); err != nil {
			return err
		}
		if err := record.ReadSignature(r, &p.Sig, "peer signature"); err != nil {
			return err
		}
		if more, err := r.Next(&ec); err != nil || more {
			return fmt.Errorf("%w: v2 peer entry longer than 5 items", ErrMalformed)
		}
		m.PeersV2 = append(m.PeersV2, p)
	}
}

func (m *Message) decodeError(r *cbor.Reader, c *cbor.Container) error {
	var f fields
	err := eachKey(r, c, func(key []byte) error {
		var bit uint32
		switch string(key) {
		case "c":
			bit = bC
		case "m":
			bit = bM
		default:
			return r.Skip()
		}
		if skip, err := f.mark(bit, key, r); err != nil || skip {
			return err
		}
		if bit == bC {
			code, err := r.ReadInt32()
			if err != nil {
				return fmt.Errorf("code: %w", err)
			}
			m.Err.Code = code
			return nil
		}
		s, err := r.ReadText()
		if err != nil {
			return fmt.Errorf("message: %w", err)
		}
		m.Err.Message = string(s)
		return nil
	})
	if err != nil {
		return err
	}
	if !f.has(bC) {
		return fmt.Errorf("%w: error without code", ErrMalformed)
	}
	return nil
}
