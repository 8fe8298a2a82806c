package message

import (
	"errors"
	"fmt"
	"math"

	"github.com/elacity/pc2/dht/internal/cbor"
	"github.com/elacity/pc2/dht/record"
)

// ErrEncode is wrapped by every error Append returns: the message cannot be
// written as it stands (a programming error of the caller, not bad input).
var ErrEncode = errors.New("message: cannot encode")

// Append appends the CBOR encoding of m in dialect d to dst. The envelope is
// an indefinite-length map written in the order y, t, q|r|e, v, and bodies
// follow Boson's field order, so a 3.x node accepts it and the output equals
// Boson's own encoding byte for byte. Append does not allocate when dst has
// room.
func (m *Message) Append(dst []byte, d Dialect) ([]byte, error) {
	if !m.Method.valid() || (m.Type != TypeError && m.Type != TypeRequest && m.Type != TypeResponse) {
		return dst, fmt.Errorf("%w: type %v method %v", ErrEncode, m.Type, m.Method)
	}
	if m.Txid == 0 || m.Txid > maxTxid || (d == V2 && m.Txid > math.MaxInt32) {
		return dst, fmt.Errorf("%w: txid %d out of range for %v", ErrEncode, m.Txid, d)
	}
	b := cbor.AppendMapStart(dst)
	b = cbor.AppendText(b, "y")
	b = cbor.AppendUint(b, uint64(m.Y()))
	b = cbor.AppendText(b, "t")
	b = cbor.AppendUint(b, m.Txid)
	var err error
	switch m.Type {
	case TypeRequest:
		b, err = m.appendRequest(b, d)
	case TypeResponse:
		b, err = m.appendResponse(b, d)
	default:
		b = cbor.AppendText(b, "e")
		b = cbor.AppendMapStart(b)
		b = cbor.AppendText(b, "c")
		b = cbor.AppendInt(b, int64(m.Err.Code))
		if m.Err.Message != "" || d == V2 { // v2 always writes m
			b = cbor.AppendText(b, "m")
			b = cbor.AppendText(b, m.Err.Message)
		}
		b = cbor.AppendBreak(b)
	}
	if err != nil {
		return dst, err
	}
	if m.Version != 0 {
		b = cbor.AppendText(b, "v")
		b = cbor.AppendInt(b, int64(m.Version))
	}
	return cbor.AppendBreak(b), nil
}

// hasCAS reports whether a cas goes on the wire: Boson writes it only when
// it is not negative, and reads a negative one as none.
func (m *Message) hasCAS() bool { return m.HasCAS && m.CAS >= 0 }

func appendKeyInt(b []byte, key string, v int64) []byte {
	b = cbor.AppendText(b, key)
	return cbor.AppendInt(b, v)
}

func appendKeyBytes(b []byte, key string, p []byte) []byte {
	b = cbor.AppendText(b, key)
	return cbor.AppendBytes(b, p)
}

func (m *Message) appendRequest(b []byte, d Dialect) ([]byte, error) {
	switch {
	case m.Method == MethodPing:
		return b, nil
	case m.Method.isLookup():
		if m.Want&^wantAll != 0 {
			return b, fmt.Errorf("%w: want %#x", ErrEncode, m.Want)
		}
		b = cbor.AppendText(b, "q")
		b = cbor.AppendMapStart(b)
		b = appendKeyBytes(b, "t", m.Target[:])
		b = appendKeyInt(b, "w", int64(m.Want))
		switch {
		case m.Method == MethodFindValue && m.hasCAS() && d == V2:
			b = appendKeyInt(b, "seq", int64(m.CAS))
		case m.Method != MethodFindNode && m.hasCAS() && d == V3:
			b = appendKeyInt(b, "cas", int64(m.CAS))
		}
		if m.Method == MethodFindPeer && m.Count != 0 && d == V3 {
			b = appendKeyInt(b, "e", int64(m.Count))
		}
		return cbor.AppendBreak(b), nil
	case m.Method == MethodStoreValue:
		if !m.HasValue {
			return b, fmt.Errorf("%w: store_value without value", ErrEncode)
		}
		b = cbor.AppendText(b, "q")
		b = cbor.AppendMapStart(b)
		b = appendKeyInt(b, "tok", int64(m.Token))
		if d == V3 {
			if m.hasCAS() {
				b = appendKeyInt(b, "cas", int64(m.CAS))
			}
			b = appendValue(b, &m.Value, d)
		} else {
			b = appendValueV2Store(b, &m.Value, m.CAS, m.hasCAS())
		}
		return cbor.AppendBreak(b), nil
	default: // announce_peer
		b = cbor.AppendText(b, "q")
		b = cbor.AppendMapStart(b)
		b = appendKeyInt(b, "tok", int64(m.Token))
		if d == V2 {
			p := &m.PeerV2
			if p.ID.IsZero() || p.Port == 0 {
				return b, fmt.Errorf("%w: v2 announce without peer id or port", ErrEncode)
			}
			b = appendKeyBytes(b, "t", p.ID[:])
			if !p.NodeID.IsZero() {
				b = appendKeyBytes(b, "x", p.NodeID[:])
			}
			b = appendKeyInt(b, "p", int64(p.Port))
			if p.Alt != "" {
				b = cbor.AppendText(b, "alt")
				b = cbor.AppendText(b, p.Alt)
			}
			b = appendKeyBytes(b, "sig", p.Sig[:])
			return cbor.AppendBreak(b), nil
		}
		p := &m.Peer
		if p.ID.IsZero() || p.Endpoint == "" {
			return b, fmt.Errorf("%w: announce without peer id or endpoint", ErrEncode)
		}
		if m.hasCAS() {
			b = appendKeyInt(b, "cas", int64(m.CAS))
		}
		b = appendKeyBytes(b, "k", p.ID[:])
		if p.Seq != 0 {
			b = appendKeyInt(b, "seq", int64(p.Seq))
		}
		if p.Authenticated() {
			b = appendKeyBytes(b, "o", p.Node[:])
			b = appendKeyBytes(b, "os", p.NodeSig[:])
		}
		b = appendKeyBytes(b, "sig", p.Sig[:])
		b = appendKeyInt(b, "f", p.Fingerprint) // required, even when 0
		b = cbor.AppendText(b, "e")
		b = cbor.AppendText(b, p.Endpoint)
		if len(p.Extra) > 0 {
			b = appendKeyBytes(b, "ex", p.Extra)
		}
		return cbor.AppendBreak(b), nil
	}
}

// appendValue writes the value fields in the v3 order k, rec, n, seq, sig, v
// (FIND_VALUE response, STORE_VALUE request) or, for v2, the FIND_VALUE
// response order, which only differs in writing seq of every mutable value.
func appendValue(b []byte, v *record.Value, d Dialect) []byte {
	mutable := v.Mutable()
	if mutable {
		b = appendKeyBytes(b, "k", v.Owner[:])
	}
	if !v.Recipient.IsZero() {
		b = appendKeyBytes(b, "rec", v.Recipient[:])
	}
	if v.HasNonce {
		b = appendKeyBytes(b, "n", v.Nonce[:])
	}
	if v.Seq != 0 || (d == V2 && mutable) {
		b = appendKeyInt(b, "seq", int64(v.Seq))
	}
	if mutable {
		b = appendKeyBytes(b, "sig", v.Sig[:])
	}
	return appendKeyBytes(b, "v", v.Data)
}

// appendValueV2Store writes a v2 STORE_VALUE body after tok: k, rec, n, sig,
// seq, cas, v, where seq and cas only appear for mutable values.
func appendValueV2Store(b []byte, v *record.Value, cas int32, hasCAS bool) []byte {
	if v.Mutable() {
		b = appendKeyBytes(b, "k", v.Owner[:])
		if !v.Recipient.IsZero() {
			b = appendKeyBytes(b, "rec", v.Recipient[:])
		}
		if v.HasNonce {
			b = appendKeyBytes(b, "n", v.Nonce[:])
		}
		b = appendKeyBytes(b, "sig", v.Sig[:])
		b = appendKeyInt(b, "seq", int64(v.Seq))
		if hasCAS {
			b = appendKeyInt(b, "cas", int64(cas))
		}
	}
	return appendKeyBytes(b, "v", v.Data)
}

func (m *Message) appendResponse(b []byte, d Dialect) ([]byte, error) {
	switch m.Method {
	case MethodPing, MethodStoreValue, MethodAnnouncePeer:
		return b, nil
	}
	b = cbor.AppendText(b, "r")
	b = cbor.AppendMapStart(b)
	var err error
	if b, err = appendNodes(b, "n4", m.Nodes4, d, false); err != nil {
		return b, err
	}
	if b, err = appendNodes(b, "n6", m.Nodes6, d, true); err != nil {
		return b, err
	}
	if m.Token != 0 && (m.Method == MethodFindNode || d == V2) {
		b = appendKeyInt(b, "tok", int64(m.Token))
	}
	switch m.Method {
	case MethodFindValue:
		if m.HasValue {
			b = appendValue(b, &m.Value, d)
		} else if d == V3 && len(m.Nodes4) == 0 && len(m.Nodes6) == 0 {
			return b, fmt.Errorf("%w: find_value response with neither value nor nodes", ErrEncode)
		}
	case MethodFindPeer:
		if d == V2 {
			if b, err = appendPeersV2(b, m.PeersV2); err != nil {
				return b, err
			}
		} else if len(m.Peers) > 0 {
			b = cbor.AppendText(b, "p")
			b = cbor.AppendArrayHeader(b, len(m.Peers))
			for i := range m.Peers {
				b = m.Peers[i].AppendCBOR(b)
			}
		}
	}
	return cbor.AppendBreak(b), nil
}

// appendPeersV2 writes p = [peerId, [nodeId, origin|null, port, alt|null, sig], ...].
func appendPeersV2(b []byte, peers []record.PeerInfoV2) ([]byte, error) {
	if len(peers) == 0 {
		return b, nil
	}
	id := peers[0].ID
	b = cbor.AppendText(b, "p")
	b = cbor.AppendArrayStart(b)
	b = cbor.AppendBytes(b, id[:])
	for i := range peers {
		p := &peers[i]
		if p.ID != id {
			return b, fmt.Errorf("%w: v2 peers of one response must share the peer id", ErrEncode)
		}
		b = cbor.AppendArrayStart(b)
		b = cbor.AppendBytes(b, p.NodeID[:])
		if p.Delegated() && !p.Origin.IsZero() {
			b = cbor.AppendBytes(b, p.Origin[:])
		} else {
			b = cbor.AppendNull(b)
		}
		b = cbor.AppendUint(b, uint64(p.Port))
		if p.Alt != "" {
			b = cbor.AppendText(b, p.Alt)
		} else {
			b = cbor.AppendNull(b)
		}
		b = cbor.AppendBytes(b, p.Sig[:])
		b = cbor.AppendBreak(b)
	}
	return cbor.AppendBreak(b), nil
}
