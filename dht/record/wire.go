package record

import (
	"fmt"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/internal/cbor"
)

// This file reads and writes records in Boson's CBOR forms. Values travel as
// loose fields inside a message body (k, rec, n, seq, sig, v next to tok or
// n4), peers as a map {id, seq, o, os, sig, f, e, ex} in FIND_PEER responses
// and as loose fields in ANNOUNCE_PEER. The stand-alone map forms written by
// AppendCBOR are the ones Boson's Java serializers produce, which makes them
// a natural storage format too.

func readID(r *cbor.Reader, what string) (identity.ID, error) {
	b, err := r.ReadBytes()
	if err != nil {
		return identity.ID{}, fmt.Errorf("%s: %w", what, err)
	}
	id, err := identity.IDFromBytes(b)
	if err != nil {
		return identity.ID{}, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if id.IsZero() {
		return identity.ID{}, fmt.Errorf("%w: %s is all zero", ErrKey, what)
	}
	return id, nil
}

func readFixed(r *cbor.Reader, dst []byte, what string) error {
	b, err := r.ReadBytes()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if len(b) != len(dst) {
		return fmt.Errorf("%w: %s is %d bytes, want %d", ErrMalformed, what, len(b), len(dst))
	}
	copy(dst, b)
	return nil
}

const (
	vfK uint8 = 1 << iota
	vfRec
	vfN
	vfSeq
	vfSig
	vfV
)

// ValueDecoder collects the value fields of a map being decoded. It is meant
// for the message codec, which meets those fields among others.
type ValueDecoder struct {
	V             *Value
	seen, present uint8
}

// Field reads the value field key if it is one, reporting whether it was.
// An explicit null counts as absent, as in Boson's Java decoder.
func (d *ValueDecoder) Field(key []byte, r *cbor.Reader) (bool, error) {
	var bit uint8
	switch string(key) {
	case "k":
		bit = vfK
	case "rec":
		bit = vfRec
	case "n":
		bit = vfN
	case "seq":
		bit = vfSeq
	case "sig":
		bit = vfSig
	case "v":
		bit = vfV
	default:
		return false, nil
	}
	if d.seen&bit != 0 {
		return true, fmt.Errorf("%w: duplicate field %q", ErrMalformed, key)
	}
	d.seen |= bit
	if r.PeekNull() {
		return true, nil
	}
	d.present |= bit
	v := d.V
	var err error
	switch bit {
	case vfK:
		v.Owner, err = readID(r, "value owner (k)")
	case vfRec:
		v.Recipient, err = readID(r, "value recipient (rec)")
	case vfN:
		err = readFixed(r, v.Nonce[:], "value nonce (n)")
		v.HasNonce = true
	case vfSeq:
		v.Seq, err = r.ReadInt32()
		if err != nil {
			err = fmt.Errorf("value seq: %w", err)
		}
	case vfSig:
		err = readFixed(r, v.Sig[:], "value signature (sig)")
	case vfV:
		v.Data, err = r.ReadBytes()
		if err != nil {
			err = fmt.Errorf("value data (v): %w", err)
		}
	}
	return true, err
}

// Present reports whether any value field was present.
func (d *ValueDecoder) Present() bool { return d.present != 0 }

// Finish checks that the fields seen form a value (see Value). Call it only
// when Present.
func (d *ValueDecoder) Finish() error {
	p := d.present
	if p&vfV == 0 {
		return fmt.Errorf("%w: value fields without data (v)", ErrMalformed)
	}
	if p&vfK == 0 {
		if p&(vfRec|vfN|vfSig) != 0 || d.V.Seq != 0 {
			return fmt.Errorf("%w: immutable value with owner fields", ErrMalformed)
		}
	} else if p&vfSig == 0 {
		return fmt.Errorf("%w: mutable value without signature", ErrMalformed)
	}
	return d.V.checkShape()
}

// AppendCBOR appends v as the map Boson's value serializer writes:
// {k, rec, n, seq (when > 0), sig, v}, owner fields only for mutable values.
func (v *Value) AppendCBOR(b []byte) []byte {
	b = cbor.AppendMapStart(b)
	if v.Mutable() {
		b = cbor.AppendText(b, "k")
		b = cbor.AppendBytes(b, v.Owner[:])
		if !v.Recipient.IsZero() {
			b = cbor.AppendText(b, "rec")
			b = cbor.AppendBytes(b, v.Recipient[:])
		}
		if v.HasNonce {
			b = cbor.AppendText(b, "n")
			b = cbor.AppendBytes(b, v.Nonce[:])
		}
		if v.Seq > 0 {
			b = cbor.AppendText(b, "seq")
			b = cbor.AppendInt(b, int64(v.Seq))
		}
		b = cbor.AppendText(b, "sig")
		b = cbor.AppendBytes(b, v.Sig[:])
	}
	b = cbor.AppendText(b, "v")
	b = cbor.AppendBytes(b, v.Data)
	return cbor.AppendBreak(b)
}

// DecodeCBOR reads a value map (AppendCBOR's form; definite or indefinite,
// any key order, unknown keys skipped). Data aliases b.
func (v *Value) DecodeCBOR(b []byte) error {
	*v = Value{}
	r := cbor.NewReader(b)
	c, err := r.EnterMap()
	if err != nil {
		return fmt.Errorf("value: %w", err)
	}
	d := ValueDecoder{V: v}
	for {
		more, err := r.Next(&c)
		if err != nil {
			return fmt.Errorf("value: %w", err)
		}
		if !more {
			break
		}
		key, err := r.ReadKey()
		if err != nil {
			return fmt.Errorf("value key: %w", err)
		}
		ok, err := d.Field(key, &r)
		if err != nil {
			return err
		}
		if !ok {
			if err := r.Skip(); err != nil {
				return fmt.Errorf("value field %q: %w", key, err)
			}
		}
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d bytes after the value", ErrMalformed, r.Len())
	}
	if !d.Present() {
		return fmt.Errorf("%w: empty value map", ErrMalformed)
	}
	return d.Finish()
}

const (
	pfID uint16 = 1 << iota
	pfSeq
	pfO
	pfOS
	pfSig
	pfF
	pfE
	pfEx
)

// PeerDecoder collects the fields of a v3.1 peer record. IDKey names the
// peer id field: "id" in the map form, "k" in ANNOUNCE_PEER.
type PeerDecoder struct {
	P             *PeerInfo
	IDKey         string
	seen, present uint16
}

// Field reads the peer field key if it is one, reporting whether it was.
func (d *PeerDecoder) Field(key []byte, r *cbor.Reader) (bool, error) {
	var bit uint16
	switch k := string(key); k {
	case d.IDKey:
		bit = pfID
	case "seq":
		bit = pfSeq
	case "o":
		bit = pfO
	case "os":
		bit = pfOS
	case "sig":
		bit = pfSig
	case "f":
		bit = pfF
	case "e":
		bit = pfE
	case "ex":
		bit = pfEx
	default:
		return false, nil
	}
	if d.seen&bit != 0 {
		return true, fmt.Errorf("%w: duplicate field %q", ErrMalformed, key)
	}
	d.seen |= bit
	if r.PeekNull() {
		return true, nil
	}
	d.present |= bit
	p := d.P
	var err error
	switch bit {
	case pfID:
		p.ID, err = readID(r, "peer id")
	case pfSeq:
		p.Seq, err = r.ReadInt32()
		if err != nil {
			err = fmt.Errorf("peer seq: %w", err)
		}
	case pfO:
		p.Node, err = readID(r, "peer node (o)")
	case pfOS:
		err = readFixed(r, p.NodeSig[:], "peer node signature (os)")
	case pfSig:
		err = readFixed(r, p.Sig[:], "peer signature (sig)")
	case pfF:
		p.Fingerprint, err = r.ReadInt()
		if err != nil {
			err = fmt.Errorf("peer fingerprint (f): %w", err)
		}
	case pfE:
		var e []byte
		e, err = r.ReadText()
		if err != nil {
			return true, fmt.Errorf("peer endpoint (e): %w", err)
		}
		if len(e) > MaxPeerPayload {
			return true, fmt.Errorf("%w: endpoint is %d bytes, limit %d", ErrTooLarge, len(e), MaxPeerPayload)
		}
		p.Endpoint = NFC(string(e))
	case pfEx:
		p.Extra, err = r.ReadBytes()
		if err != nil {
			err = fmt.Errorf("peer extra (ex): %w", err)
		}
		if len(p.Extra) == 0 {
			p.Extra = nil
		}
	}
	return true, err
}

// Finish checks that the fields form a peer record. requireFingerprint is
// set for ANNOUNCE_PEER, where Boson requires f even when it is 0.
func (d *PeerDecoder) Finish(requireFingerprint bool) error {
	p := d.present
	switch {
	case p&pfID == 0:
		return fmt.Errorf("%w: peer record without id (%s)", ErrMalformed, d.IDKey)
	case p&pfSig == 0:
		return fmt.Errorf("%w: peer record without signature", ErrMalformed)
	case p&pfE == 0:
		return fmt.Errorf("%w: peer record without endpoint", ErrMalformed)
	case (p&pfO == 0) != (p&pfOS == 0):
		return fmt.Errorf("%w: peer node id and node signature must come together", ErrMalformed)
	case requireFingerprint && p&pfF == 0:
		return fmt.Errorf("%w: peer announcement without fingerprint", ErrMalformed)
	}
	return d.P.checkShape()
}

// DecodeFrom reads one peer map from r into p.
func (p *PeerInfo) DecodeFrom(r *cbor.Reader) error {
	*p = PeerInfo{}
	c, err := r.EnterMap()
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	d := PeerDecoder{P: p, IDKey: "id"}
	for {
		more, err := r.Next(&c)
		if err != nil {
			return fmt.Errorf("peer: %w", err)
		}
		if !more {
			break
		}
		key, err := r.ReadKey()
		if err != nil {
			return fmt.Errorf("peer key: %w", err)
		}
		ok, err := d.Field(key, r)
		if err != nil {
			return err
		}
		if !ok {
			if err := r.Skip(); err != nil {
				return fmt.Errorf("peer field %q: %w", key, err)
			}
		}
	}
	return d.Finish(false)
}

// DecodeCBOR reads a peer map (AppendCBOR's form). Extra aliases b.
func (p *PeerInfo) DecodeCBOR(b []byte) error {
	r := cbor.NewReader(b)
	if err := p.DecodeFrom(&r); err != nil {
		return err
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d bytes after the peer record", ErrMalformed, r.Len())
	}
	return nil
}

// AppendCBOR appends p as the map Boson's peer serializer writes:
// {id, seq (when > 0), o, os, sig, f (when != 0), e, ex}.
func (p *PeerInfo) AppendCBOR(b []byte) []byte {
	b = cbor.AppendMapStart(b)
	b = cbor.AppendText(b, "id")
	b = cbor.AppendBytes(b, p.ID[:])
	if p.Seq > 0 {
		b = cbor.AppendText(b, "seq")
		b = cbor.AppendInt(b, int64(p.Seq))
	}
	if p.Authenticated() {
		b = cbor.AppendText(b, "o")
		b = cbor.AppendBytes(b, p.Node[:])
		b = cbor.AppendText(b, "os")
		b = cbor.AppendBytes(b, p.NodeSig[:])
	}
	b = cbor.AppendText(b, "sig")
	b = cbor.AppendBytes(b, p.Sig[:])
	if p.Fingerprint != 0 {
		b = cbor.AppendText(b, "f")
		b = cbor.AppendInt(b, p.Fingerprint)
	}
	b = cbor.AppendText(b, "e")
	b = cbor.AppendText(b, p.Endpoint)
	if len(p.Extra) > 0 {
		b = cbor.AppendText(b, "ex")
		b = cbor.AppendBytes(b, p.Extra)
	}
	return cbor.AppendBreak(b)
}

// ReadNonce reads a 24-byte nonce field; exported for the message codec.
func ReadNonce(r *cbor.Reader, n *cryptobox.Nonce, what string) error {
	return readFixed(r, n[:], what)
}

// ReadID reads a 32-byte, non-zero id field; exported for the message codec.
func ReadID(r *cbor.Reader, what string) (identity.ID, error) { return readID(r, what) }

// ReadSignature reads a 64-byte signature field; exported for the message codec.
func ReadSignature(r *cbor.Reader, s *Signature, what string) error {
	return readFixed(r, s[:], what)
}
