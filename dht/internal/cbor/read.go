package cbor

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays, maps and tags. A Boson message nests
// four levels (message, body, list, entry); 16 matches the Java reference
// decoder's limit and leaves room for unknown extensions.
const MaxDepth = 16

// Errors returned by the Reader. They are wrapped with the offset at which
// they occurred.
var (
	ErrTruncated = errors.New("cbor: truncated input")
	ErrMalformed = errors.New("cbor: malformed item")
	ErrDepth     = errors.New("cbor: nesting too deep")
	ErrType      = errors.New("cbor: unexpected type")
	ErrRange     = errors.New("cbor: integer out of range")
	ErrUTF8      = errors.New("cbor: text is not valid UTF-8")
)

// Reader decodes CBOR items from a byte slice. Byte and text strings it
// returns alias the input (or, for chunked strings, a scratch buffer of at
// most the input's length), so they are valid only as long as the input is.
type Reader struct {
	buf     []byte
	off     int
	depth   int
	scratch []byte
}

// NewReader returns a Reader over b.
func NewReader(b []byte) Reader { return Reader{buf: b} }

// Reset points r at b, keeping its scratch buffer for reuse.
func (r *Reader) Reset(b []byte) {
	r.buf, r.off, r.depth = b, 0, 0
	r.scratch = r.scratch[:0]
}

// Offset returns the number of bytes consumed.
func (r *Reader) Offset() int { return r.off }

// Len returns the number of bytes not yet consumed.
func (r *Reader) Len() int { return len(r.buf) - r.off }

func (r *Reader) fail(err error) error {
	return fmt.Errorf("%w at offset %d", err, r.off)
}

// head reads an item head: major type, additional info and argument. For
// indefinite lengths indef is true and arg is 0.
func (r *Reader) head() (major byte, arg uint64, indef bool, err error) {
	if r.off >= len(r.buf) {
		return 0, 0, false, r.fail(ErrTruncated)
	}
	ib := r.buf[r.off]
	major, info := ib>>5, ib&0x1f
	n := 0
	switch {
	case info < 24:
		r.off++
		return major, uint64(info), false, nil
	case info == 24:
		n = 1
	case info == 25:
		n = 2
	case info == 26:
		n = 4
	case info == 27:
		n = 8
	case info == infoIndefinite:
		switch major {
		case MajorBytes, MajorText, MajorArray, MajorMap:
			r.off++
			return major, 0, true, nil
		}
		return 0, 0, false, r.fail(ErrMalformed)
	default:
		return 0, 0, false, r.fail(ErrMalformed)
	}
	if len(r.buf)-r.off-1 < n {
		return 0, 0, false, r.fail(ErrTruncated)
	}
	for _, c := range r.buf[r.off+1 : r.off+1+n] {
		arg = arg<<8 | uint64(c)
	}
	r.off += 1 + n
	return major, arg, false, nil
}

// PeekNull consumes a null (or undefined) if it is next and reports whether it did.
// Boson's Java decoder treats an explicit null like an absent field.
func (r *Reader) PeekNull() bool {
	if r.off < len(r.buf) && (r.buf[r.off] == Null || r.buf[r.off] == Undefined) {
		r.off++
		return true
	}
	return false
}

// PeekBreak reports whether the next byte is a break code, without consuming it.
func (r *Reader) PeekBreak() bool { return r.off < len(r.buf) && r.buf[r.off] == Break }

// PeekMajor returns the major type of the next item without consuming it.
func (r *Reader) PeekMajor() (byte, error) {
	if r.off >= len(r.buf) {
		return 0, r.fail(ErrTruncated)
	}
	return r.buf[r.off] >> 5, nil
}

// Container tracks the position inside an array or map being read.
type Container struct {
	left  uint64 // items (arrays) or pairs (maps) left in a definite container
	indef bool
}

func (r *Reader) enter(want byte, minItemBytes int) (Container, error) {
	start := r.off
	major, arg, indef, err := r.head()
	if err != nil {
		return Container{}, err
	}
	if major != want {
		r.off = start
		return Container{}, r.fail(ErrType)
	}
	if r.depth >= MaxDepth {
		return Container{}, r.fail(ErrDepth)
	}
	// A claimed count can never exceed what the remaining bytes can hold;
	// checking it here keeps hostile counts from driving any later work.
	if !indef && arg > uint64(r.Len()/minItemBytes) {
		return Container{}, r.fail(ErrTruncated)
	}
	r.depth++
	return Container{left: arg, indef: indef}, nil
}

// EnterMap reads a map head (definite or indefinite).
func (r *Reader) EnterMap() (Container, error) { return r.enter(MajorMap, 2) }

// EnterArray reads an array head (definite or indefinite).
func (r *Reader) EnterArray() (Container, error) { return r.enter(MajorArray, 1) }

// Next reports whether c has another item (array) or pair (map) to read.
// When it returns false the container is finished and has been left.
func (r *Reader) Next(c *Container) (bool, error) {
	if c.indef {
		if r.off >= len(r.buf) {
			return false, r.fail(ErrTruncated)
		}
		if r.buf[r.off] == Break {
			r.off++
			r.depth--
			return false, nil
		}
		return true, nil
	}
	if c.left == 0 {
		r.depth--
		return false, nil
	}
	c.left--
	return true, nil
}

// ReadUint reads a non-negative integer.
func (r *Reader) ReadUint() (uint64, error) {
	start := r.off
	major, arg, _, err := r.head()
	if err != nil {
		return 0, err
	}
	if major != MajorUint {
		r.off = start
		return 0, r.fail(ErrType)
	}
	return arg, nil
}

// ReadInt reads an integer of major type 0 or 1 that fits in an int64.
func (r *Reader) ReadInt() (int64, error) {
	start := r.off
	major, arg, _, err := r.head()
	if err != nil {
		return 0, err
	}
	switch major {
	case MajorUint:
		if arg > math.MaxInt64 {
			r.off = start
			return 0, r.fail(ErrRange)
		}
		return int64(arg), nil
	case MajorNegInt:
		if arg > math.MaxInt64 {
			r.off = start
			return 0, r.fail(ErrRange)
		}
		return -1 - int64(arg), nil
	}
	r.off = start
	return 0, r.fail(ErrType)
}

// ReadInt32 reads an integer that fits in an int32.
func (r *Reader) ReadInt32() (int32, error) {
	start := r.off
	v, err := r.ReadInt()
	if err != nil {
		return 0, err
	}
	if v < math.MinInt32 || v > math.MaxInt32 {
		r.off = start
		return 0, r.fail(ErrRange)
	}
	return int32(v), nil
}

// ReadBytes reads a byte string.
func (r *Reader) ReadBytes() ([]byte, error) { return r.readString(MajorBytes) }

// ReadText reads a text string and checks that it is valid UTF-8.
func (r *Reader) ReadText() ([]byte, error) {
	s, err := r.readString(MajorText)
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(s) {
		return nil, r.fail(ErrUTF8)
	}
	return s, nil
}

// ReadKey reads a map key, which Boson always writes as a text string. The
// key is not checked for UTF-8: it is only compared with known names.
func (r *Reader) ReadKey() ([]byte, error) { return r.readString(MajorText) }

// ReadBytesOrText reads a byte or text string and reports which it was.
func (r *Reader) ReadBytesOrText() (s []byte, text bool, err error) {
	major, err := r.PeekMajor()
	if err != nil {
		return nil, false, err
	}
	if major == MajorText {
		s, err = r.ReadText()
		return s, true, err
	}
	s, err = r.ReadBytes()
	return s, false, err
}

func (r *Reader) readString(want byte) ([]byte, error) {
	start := r.off
	major, arg, indef, err := r.head()
	if err != nil {
		return nil, err
	}
	if major != want {
		r.off = start
		return nil, r.fail(ErrType)
	}
	if !indef {
		if arg > uint64(r.Len()) {
			return nil, r.fail(ErrTruncated)
		}
		s := r.buf[r.off : r.off+int(arg) : r.off+int(arg)]
		r.off += int(arg)
		return s, nil
	}
	// Chunked string: concatenate the chunks into scratch. The content of all
	// chunked strings of one input together is shorter than the input, so a
	// scratch buffer of the input's length never grows and earlier results
	// stay valid.
	if cap(r.scratch) < len(r.buf) {
		r.scratch = make([]byte, 0, len(r.buf))
	}
	from := len(r.scratch)
	for {
		if r.off >= len(r.buf) {
			return nil, r.fail(ErrTruncated)
		}
		if r.buf[r.off] == Break {
			r.off++
			break
		}
		cm, carg, cindef, err := r.head()
		if err != nil {
			return nil, err
		}
		if cm != want || cindef {
			return nil, r.fail(ErrMalformed)
		}
		if carg > uint64(r.Len()) {
			return nil, r.fail(ErrTruncated)
		}
		r.scratch = append(r.scratch, r.buf[r.off:r.off+int(carg)]...)
		r.off += int(carg)
	}
	return r.scratch[from:len(r.scratch):len(r.scratch)], nil
}

// Skip consumes one complete item of any type, bounded by MaxDepth.
func (r *Reader) Skip() error {
	start := r.off
	major, arg, indef, err := r.head()
	if err != nil {
		return err
	}
	switch major {
	case MajorUint, MajorNegInt:
		return nil
	case MajorBytes, MajorText:
		r.off = start
		_, err := r.readString(major)
		return err
	case MajorArray, MajorMap:
		if r.depth >= MaxDepth {
			return r.fail(ErrDepth)
		}
		per := uint64(1)
		if major == MajorMap {
			per = 2
		}
		if !indef && arg > uint64(r.Len())/per {
			return r.fail(ErrTruncated)
		}
		r.depth++
		defer func() { r.depth-- }()
		if indef {
			for {
				if r.off >= len(r.buf) {
					return r.fail(ErrTruncated)
				}
				if r.buf[r.off] == Break {
					r.off++
					return nil
				}
				for range per {
					if err := r.Skip(); err != nil {
						return err
					}
				}
			}
		}
		for i := uint64(0); i < arg*per; i++ {
			if err := r.Skip(); err != nil {
				return err
			}
		}
		return nil
	case MajorTag:
		if r.depth >= MaxDepth {
			return r.fail(ErrDepth)
		}
		r.depth++
		defer func() { r.depth-- }()
		return r.Skip()
	default: // simple values and floats; head() consumed their payload
		if r.buf[start] == Break {
			r.off = start
			return r.fail(ErrMalformed)
		}
		return nil
	}
}
