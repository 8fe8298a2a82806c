package clienthello

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

const (
	// MaxSize caps the bytes read from a connection while looking for the
	// ClientHello (record headers included), like nginx's preread buffer.
	MaxSize = 16 << 10

	// MaxALPN is how many ALPN protocol names are kept; further names are
	// validated and counted but not stored.
	MaxALPN = 16

	maxNameLen     = 253
	maxLabelLen    = 63
	recordHeader   = 5
	maxRecordLen   = 1 << 14
	handshakeHdr   = 4
	typeHandshake  = 22
	msgClientHello = 1
	extServerName  = 0
	extALPN        = 16
	nameTypeHost   = 0
)

type span struct{ off, n uint16 }

// Hello is one ClientHello: the bytes read from the connection and the
// fields parsed from them. Byte slices it returns alias its buffer and are
// valid until Release.
type Hello struct {
	buf  [MaxSize]byte  // bytes read, in order (Raw)
	frag *[MaxSize]byte // reassembly area, only for hellos spanning records
	n    int            // valid bytes in buf

	// record walking state
	next     int  // offset in buf of the next unparsed record header
	fragN    int  // handshake bytes gathered in frag
	multi    bool // the hello spans several records (frag is used)
	msg      []byte
	done     bool
	recVer   uint16
	nameLen  int
	name     [maxNameLen]byte
	alpn     [MaxALPN]span
	alpnN    int
	alpnSeen int
}

var (
	pool     = sync.Pool{New: func() any { return new(Hello) }}
	fragPool = sync.Pool{New: func() any { return new([MaxSize]byte) }}
)

// Read reads from r until a complete ClientHello has arrived, then parses it.
// It returns a pooled *Hello; call Release when done with it. Bytes after the
// ClientHello that arrived in the same reads (TLS 1.3 early data) are kept in
// Raw, so replaying Raw reproduces the stream exactly.
//
// The caller bounds the time by setting a read deadline on the connection.
// Read errors from r are wrapped; protocol failures are *Error.
func Read(r io.Reader) (*Hello, error) {
	h := pool.Get().(*Hello)
	h.reset()
	for !h.done {
		if h.n == len(h.buf) {
			h.Release()
			return nil, errTooLarge
		}
		m, rerr := r.Read(h.buf[h.n:])
		h.n += m
		if err := h.advance(); err != nil {
			h.Release()
			return nil, err
		}
		if h.done {
			break
		}
		if rerr == io.EOF {
			h.Release()
			return nil, errTruncated
		}
		if rerr != nil {
			h.Release()
			return nil, fmt.Errorf("clienthello: read: %w", rerr)
		}
	}
	if err := h.parse(); err != nil {
		h.Release()
		return nil, err
	}
	return h, nil
}

// Parse parses the ClientHello at the start of raw into h, copying up to
// MaxSize bytes of raw into h's buffer. h may be a zero Hello held by the
// caller (no pool involved); it is overwritten.
func (h *Hello) Parse(raw []byte) error {
	h.reset()
	h.n = copy(h.buf[:], raw)
	return h.parseBuffered()
}

// Resume continues reading a ClientHello whose first bytes, partial, were
// read earlier (nil at first). It copies partial into a pooled Hello, lets
// fill write whatever the connection has now after it (fill returns how
// many bytes it wrote, 0 when nothing was available) and parses. When the
// ClientHello is complete, Resume returns it (Release it when done). While
// it is not, and MaxSize has not been reached, Resume returns the bytes
// gathered so far (partial with the new bytes appended, in a slice that
// grows with what the client sent) and an error matching ErrTruncated; the
// caller keeps that slice between reads instead of a 16 KiB buffer, so a
// connection that never finishes its hello costs only what it sent. Errors
// from fill are returned as is, with partial.
func Resume(partial []byte, fill func(buf []byte) (int, error)) (*Hello, []byte, error) {
	if len(partial) >= MaxSize {
		return nil, partial, errTooLarge
	}
	h := pool.Get().(*Hello)
	h.reset()
	k := copy(h.buf[:], partial)
	n, err := fill(h.buf[k:])
	if err != nil {
		h.Release()
		return nil, partial, err
	}
	h.n = k + min(max(n, 0), len(h.buf)-k)
	if err := h.parseBuffered(); err != nil {
		if errors.Is(err, ErrTruncated) {
			partial = append(partial, h.buf[k:h.n]...)
		}
		h.Release()
		return nil, partial, err
	}
	return h, nil, nil
}

// parseBuffered parses the h.n bytes in h.buf as Parse does.
func (h *Hello) parseBuffered() error {
	if err := h.advance(); err != nil {
		return err
	}
	if !h.done {
		if h.n == len(h.buf) {
			return errTooLarge
		}
		return errTruncated
	}
	return h.parse()
}

// Release returns h to the pool. h must not be used afterwards.
func (h *Hello) Release() {
	h.reset()
	pool.Put(h)
}

func (h *Hello) reset() {
	h.n, h.next, h.fragN = 0, 0, 0
	h.multi, h.done = false, false
	h.msg = nil
	if h.frag != nil {
		fragPool.Put(h.frag)
		h.frag = nil
	}
	h.recVer = 0
	h.nameLen, h.alpnN, h.alpnSeen = 0, 0, 0
}

// Raw returns every byte read from the connection, to be written to the
// backend before relaying the rest of the stream.
func (h *Hello) Raw() []byte { return h.buf[:h.n] }

// ServerName returns the SNI host name, lowercased and without a trailing dot.
func (h *Hello) ServerName() string { return string(h.name[:h.nameLen]) }

// ServerNameBytes is ServerName without the allocation; it aliases h.
func (h *Hello) ServerNameBytes() []byte { return h.name[:h.nameLen] }

// RecordVersion is the legacy_record_version of the first record, which an
// alert sent back to this client should carry.
func (h *Hello) RecordVersion() uint16 { return h.recVer }

// NumALPN is the number of ALPN protocols stored (at most MaxALPN).
func (h *Hello) NumALPN() int { return h.alpnN }

// ALPNAt returns the i-th offered ALPN protocol; it aliases h.
func (h *Hello) ALPNAt(i int) []byte {
	s := h.alpn[i]
	return h.msg[s.off : s.off+s.n]
}

// ALPN returns the offered ALPN protocols (allocates; see ALPNAt).
func (h *Hello) ALPN() []string {
	if h.alpnN == 0 {
		return nil
	}
	out := make([]string, h.alpnN)
	for i := range out {
		out[i] = string(h.ALPNAt(i))
	}
	return out
}

// OffersALPN reports whether the client offered protocol p.
func (h *Hello) OffersALPN(p string) bool {
	for i := 0; i < h.alpnN; i++ {
		if string(h.ALPNAt(i)) == p {
			return true
		}
	}
	return false
}

// advance walks the complete records in buf[next:n], gathering handshake
// bytes, and sets done once the whole ClientHello message is available.
func (h *Hello) advance() error {
	if h.n > 0 && h.buf[0] != typeHandshake {
		return errNotHandshake
	}
	for !h.done {
		rest := h.buf[h.next:h.n]
		if len(rest) < recordHeader {
			// Judge the version as soon as it has arrived, so that
			// garbage is rejected without waiting for more bytes.
			if len(rest) >= 1 && rest[0] != typeHandshake {
				return h.recordErr(rest[0])
			}
			if len(rest) >= 2 && rest[1] != 3 {
				return errRecordVersion
			}
			return nil
		}
		if rest[0] != typeHandshake {
			return h.recordErr(rest[0])
		}
		if rest[1] != 3 {
			return errRecordVersion
		}
		rlen := int(rest[3])<<8 | int(rest[4])
		if rlen == 0 {
			return errEmptyRecord
		}
		if rlen > maxRecordLen {
			return errRecordOverflow
		}
		if h.next == 0 {
			h.recVer = uint16(rest[1])<<8 | uint16(rest[2])
			// Fail early when the announced size cannot fit.
			if recordHeader+rlen > len(h.buf) {
				return errTooLarge
			}
		}
		if len(rest) < recordHeader+rlen {
			if h.next+recordHeader+rlen > len(h.buf) {
				return errTooLarge
			}
			if h.next == 0 && len(rest) > recordHeader && rest[recordHeader] != msgClientHello {
				return errNotClientHello // reject before the record completes
			}
			return nil
		}
		payload := rest[recordHeader : recordHeader+rlen]
		h.next += recordHeader + rlen
		if err := h.gather(payload); err != nil {
			return err
		}
	}
	return nil
}

func (h *Hello) recordErr(typ byte) error {
	if h.next == 0 {
		if typ != typeHandshake {
			return errNotHandshake
		}
		return errRecordVersion
	}
	if typ != typeHandshake {
		return errInterleaved
	}
	return errRecordVersion
}

// gather adds one record's payload to the handshake message.
func (h *Hello) gather(payload []byte) error {
	if !h.multi {
		if payload[0] != msgClientHello {
			return errNotClientHello
		}
		// Fast path: the first record holds the whole message.
		if len(payload) >= handshakeHdr {
			total := handshakeHdr + (int(payload[1])<<16 | int(payload[2])<<8 | int(payload[3]))
			if total > MaxSize {
				return errTooLarge
			}
			if total <= len(payload) {
				h.msg = payload[:total]
				h.done = true
				return nil
			}
		}
		h.multi = true
		h.frag = fragPool.Get().(*[MaxSize]byte)
	}
	h.fragN += copy(h.frag[h.fragN:], payload)
	if h.fragN < handshakeHdr {
		return nil
	}
	if h.frag[0] != msgClientHello {
		return errNotClientHello
	}
	total := handshakeHdr + (int(h.frag[1])<<16 | int(h.frag[2])<<8 | int(h.frag[3]))
	if total > len(h.frag) {
		return errTooLarge
	}
	if h.fragN >= total {
		h.msg = h.frag[:total]
		h.done = true
	}
	return nil
}

// parse decodes the ClientHello body in h.msg (RFC 8446 §4.1.2).
func (h *Hello) parse() error {
	b := h.msg[handshakeHdr:]
	base := handshakeHdr // offset of b[0] within h.msg, for ALPN spans
	// legacy_version(2) random(32)
	if len(b) < 2+32+1 {
		return errShortBody
	}
	skip := 2 + 32
	sid := int(b[skip])
	if sid > 32 {
		return errSessionID
	}
	skip += 1 + sid
	if len(b) < skip+2 {
		return errShortBody
	}
	cs := int(b[skip])<<8 | int(b[skip+1])
	if cs < 2 || cs%2 != 0 {
		return errCipherSuites
	}
	skip += 2 + cs
	if len(b) < skip+1 {
		return errShortBody
	}
	cm := int(b[skip])
	if cm < 1 {
		return errCompression
	}
	skip += 1 + cm
	if len(b) < skip {
		return errShortBody
	}
	if len(b) == skip {
		return errNoSNI // no extensions at all (TLS 1.2 allows that)
	}
	if len(b) < skip+2 {
		return errExtensionsLen
	}
	el := int(b[skip])<<8 | int(b[skip+1])
	skip += 2
	if len(b)-skip != el {
		return errExtensionsLen
	}
	ext := b[skip:]
	base += skip
	var seenSNI, seenALPN bool
	for len(ext) > 0 {
		if len(ext) < 4 {
			return errExtension
		}
		typ := uint16(ext[0])<<8 | uint16(ext[1])
		l := int(ext[2])<<8 | int(ext[3])
		if len(ext) < 4+l {
			return errExtension
		}
		data := ext[4 : 4+l]
		dataOff := base + 4
		ext = ext[4+l:]
		base += 4 + l
		switch typ {
		case extServerName:
			if seenSNI {
				return errDupExtension
			}
			seenSNI = true
			if err := h.parseSNI(data); err != nil {
				return err
			}
		case extALPN:
			if seenALPN {
				return errDupExtension
			}
			seenALPN = true
			if err := h.parseALPN(data, dataOff); err != nil {
				return err
			}
		}
	}
	if h.nameLen == 0 {
		return errNoSNI
	}
	return nil
}

// parseSNI decodes a server_name extension (RFC 6066 §3).
func (h *Hello) parseSNI(d []byte) error {
	if len(d) < 2 {
		return errSNIList
	}
	ll := int(d[0])<<8 | int(d[1])
	d = d[2:]
	if ll != len(d) || ll == 0 {
		return errSNIList
	}
	found := false
	for len(d) > 0 {
		if len(d) < 3 {
			return errSNIList
		}
		typ := d[0]
		nl := int(d[1])<<8 | int(d[2])
		if nl == 0 || len(d) < 3+nl {
			return errSNIList
		}
		name := d[3 : 3+nl]
		d = d[3+nl:]
		if typ != nameTypeHost {
			continue
		}
		if found {
			return errDupHostName
		}
		found = true
		n, err := canonicalName(&h.name, name)
		if err != nil {
			return err
		}
		h.nameLen = n
	}
	if !found {
		return errNoSNI
	}
	return nil
}

// parseALPN decodes an application_layer_protocol_negotiation extension
// (RFC 7301 §3.1); off is the offset of d within h.msg.
func (h *Hello) parseALPN(d []byte, off int) error {
	if len(d) < 2 {
		return errALPNList
	}
	ll := int(d[0])<<8 | int(d[1])
	d = d[2:]
	off += 2
	if ll != len(d) || ll < 2 {
		return errALPNList
	}
	for len(d) > 0 {
		pl := int(d[0])
		if pl == 0 || len(d) < 1+pl {
			return errALPNList
		}
		if h.alpnN < MaxALPN {
			h.alpn[h.alpnN] = span{uint16(off + 1), uint16(pl)}
			h.alpnN++
		}
		h.alpnSeen++
		d = d[1+pl:]
		off += 1 + pl
	}
	return nil
}

// canonicalName validates src as a DNS host name (letters, digits, hyphen;
// labels 1..63; total ≤253; not an IP literal), writes it lowercased and
// without a trailing dot into dst, and returns its length.
func canonicalName(dst *[maxNameLen]byte, src []byte) (int, error) {
	if len(src) > 0 && src[len(src)-1] == '.' {
		src = src[:len(src)-1]
	}
	if len(src) == 0 || len(src) > maxNameLen {
		return 0, errNameLength
	}
	labelStart := 0
	allDigits := true
	for i := 0; i <= len(src); i++ {
		if i == len(src) || src[i] == '.' {
			l := i - labelStart
			if l == 0 || l > maxLabelLen {
				return 0, errNameLabel
			}
			if src[labelStart] == '-' || src[i-1] == '-' {
				return 0, errNameHyphen
			}
			if i == len(src) {
				break
			}
			dst[i] = '.'
			labelStart = i + 1
			allDigits = true
			continue
		}
		c := src[i]
		switch {
		case c >= 'a' && c <= 'z', c == '-':
			allDigits = false
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
			allDigits = false
		case c >= '0' && c <= '9':
		default:
			return 0, errNameChar
		}
		dst[i] = c
	}
	if allDigits {
		return 0, errNameNumeric
	}
	return len(src), nil
}
