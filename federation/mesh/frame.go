package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame types of the control stream.
const (
	frameStatus    byte = 'S' // JSON status
	frameRecord    byte = 'R' // JSON wire.Record
	frameDeleted   byte = 'D' // JSON {"name":…}
	frameSyncBegin byte = 'B' // empty: a full snapshot of registrations follows
	frameSyncEnd   byte = 'E' // empty: the snapshot is complete
)

// MaxFrame bounds one control frame's payload. The largest frame is a
// status with the tunnel list (~46 bytes per tunnel).
const MaxFrame = 8 << 20

// ErrFrame is returned (wrapped) for a frame that cannot be decoded.
var ErrFrame = errors.New("mesh: bad frame")

// AppendFrame appends one frame: type u8 | length u32 BE | payload.
func AppendFrame(dst []byte, typ byte, payload []byte) ([]byte, error) {
	if len(payload) > MaxFrame {
		return dst, fmt.Errorf("%w: payload of %d bytes", ErrFrame, len(payload))
	}
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...), nil
}

// ReadFrame reads one frame of at most max payload bytes from r. It
// allocates only once the length is known to be within max.
func ReadFrame(r io.Reader, max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	switch hdr[0] {
	case frameStatus, frameRecord, frameDeleted, frameSyncBegin, frameSyncEnd:
	default:
		return 0, nil, fmt.Errorf("%w: type %#x", ErrFrame, hdr[0])
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(max) {
		return 0, nil, fmt.Errorf("%w: length %d above %d", ErrFrame, n, max)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, fmt.Errorf("%w: %w", ErrFrame, err)
	}
	return hdr[0], p, nil
}
