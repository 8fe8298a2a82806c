package peer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Stream header, sent by the dialer at the start of every stream:
//
//	0  1  version (1)
//	1  1  protocol length n (1..64)
//	2  n  protocol: printable ASCII (0x21..0x7e)
//
// The acceptor answers one status byte. Control streams use the reserved
// protocol name controlProtocol, whose messages are length-prefixed
// (2 bytes, big-endian, at most maxControlMsg).
const (
	headerVersion   = 1
	MaxProtocolLen  = 64
	controlProtocol = "pc2/path"
	maxControlMsg   = 1024
)

// Status is the acceptor's answer to a stream header.
type Status byte

// Statuses.
const (
	StatusOK         Status = 0
	StatusNoProtocol Status = 1 // nobody listens for the protocol
	StatusBusy       Status = 2 // the listener's queue is full
)

// Errors.
var (
	// ErrBadHeader matches every malformed stream header or control message.
	ErrBadHeader = errors.New("peer: malformed stream header")
	// ErrNoProtocol is returned by Dial when the peer does not listen for
	// the protocol.
	ErrNoProtocol = errors.New("peer: the peer does not serve this protocol")
	// ErrBusy is returned by Dial when the peer's listener is full.
	ErrBusy = errors.New("peer: the peer's listener is busy")
	// ErrUnreachable is returned by Dial when no path to the peer works.
	ErrUnreachable = errors.New("peer: no path to the peer")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("peer: endpoint closed")
)

func badHeader(why string) error { return fmt.Errorf("%w: %s", ErrBadHeader, why) }

// CheckProtocol reports whether name is a valid protocol name.
func CheckProtocol(name string) error {
	if len(name) == 0 || len(name) > MaxProtocolLen {
		return badHeader(fmt.Sprintf("protocol name of %d bytes (1..%d)", len(name), MaxProtocolLen))
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x21 || c > 0x7e {
			return badHeader(fmt.Sprintf("byte %#x in protocol name", c))
		}
	}
	return nil
}

// AppendHeader appends the stream header for protocol.
func AppendHeader(dst []byte, protocol string) ([]byte, error) {
	if err := CheckProtocol(protocol); err != nil {
		return dst, err
	}
	dst = append(dst, headerVersion, byte(len(protocol)))
	return append(dst, protocol...), nil
}

// ReadHeader reads a stream header from r and returns the protocol. It reads
// at most 2+MaxProtocolLen bytes.
func ReadHeader(r io.Reader) (string, error) {
	var h [2 + MaxProtocolLen]byte
	if _, err := io.ReadFull(r, h[:2]); err != nil {
		return "", fmt.Errorf("peer: stream header: %w", err)
	}
	if h[0] != headerVersion {
		return "", badHeader(fmt.Sprintf("version %d", h[0]))
	}
	n := int(h[1])
	if n == 0 || n > MaxProtocolLen {
		return "", badHeader(fmt.Sprintf("protocol length %d", n))
	}
	if _, err := io.ReadFull(r, h[2:2+n]); err != nil {
		return "", fmt.Errorf("peer: stream header: %w", err)
	}
	p := string(h[2 : 2+n])
	if err := CheckProtocol(p); err != nil {
		return "", err
	}
	return p, nil
}

// writeMsg writes one length-prefixed control message.
func writeMsg(w io.Writer, b []byte) error {
	if len(b) > maxControlMsg {
		return fmt.Errorf("peer: control message of %d bytes", len(b))
	}
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	_, err := w.Write(buf)
	return err
}

// ReadMsg reads one length-prefixed control message (at most
// maxControlMsg bytes).
func ReadMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n == 0 || n > maxControlMsg {
		return nil, badHeader(fmt.Sprintf("control message length %d", n))
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}
