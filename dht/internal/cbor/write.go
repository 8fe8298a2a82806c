// Package cbor is the small subset of CBOR (RFC 8949) that Boson DHT
// messages and records use: unsigned and negative integers, byte and text
// strings, arrays, maps, null, and the break code of indefinite-length items.
//
// It exists because the DHT codec must be exact and cheap at the same time:
//
//   - exact: Boson 3.x writes indefinite-length maps with keys in a fixed,
//     non-canonical order ("y", "t", body, "v"), and a 3.x receiver rejects a
//     message whose body comes before "y". A general-purpose encoder has to be
//     driven key by key to reproduce that, at which point it is a hand-written
//     encoder with extra indirection.
//   - cheap: every datagram of the DHT goes through this code. Appending into a
//     caller's buffer and reading with a cursor that aliases the input costs no
//     allocation at all on the hot path.
//
// The measurement that decided between this package and
// github.com/fxamacker/cbor/v2 is recorded in dht/BENCH.md.
//
// Writers append to a byte slice and always use the shortest head. The Reader
// accepts definite and indefinite lengths (including chunked strings),
// bounds nesting depth, checks every claimed length against the bytes that
// are actually there, and never allocates more than the input it reads.
package cbor

// Major types.
const (
	MajorUint   = 0
	MajorNegInt = 1
	MajorBytes  = 2
	MajorText   = 3
	MajorArray  = 4
	MajorMap    = 5
	MajorTag    = 6
	MajorSimple = 7
)

// Special single-byte items.
const (
	False          = 0xf4
	True           = 0xf5
	Null           = 0xf6
	Undefined      = 0xf7
	Break          = 0xff
	indefMap       = 0xbf
	indefArray     = 0x9f
	infoIndefinite = 31
)

// AppendHead appends the head of a major type with argument arg, in its
// shortest form.
func AppendHead(b []byte, major byte, arg uint64) []byte {
	m := major << 5
	switch {
	case arg < 24:
		return append(b, m|byte(arg))
	case arg <= 0xff:
		return append(b, m|24, byte(arg))
	case arg <= 0xffff:
		return append(b, m|25, byte(arg>>8), byte(arg))
	case arg <= 0xffffffff:
		return append(b, m|26, byte(arg>>24), byte(arg>>16), byte(arg>>8), byte(arg))
	default:
		return append(b, m|27, byte(arg>>56), byte(arg>>48), byte(arg>>40), byte(arg>>32),
			byte(arg>>24), byte(arg>>16), byte(arg>>8), byte(arg))
	}
}

// AppendUint appends an unsigned integer.
func AppendUint(b []byte, v uint64) []byte { return AppendHead(b, MajorUint, v) }

// AppendInt appends a signed integer: major type 0 when v >= 0, else 1.
func AppendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return AppendHead(b, MajorUint, uint64(v))
	}
	return AppendHead(b, MajorNegInt, uint64(-1-v))
}

// AppendBytes appends a definite-length byte string.
func AppendBytes(b, p []byte) []byte {
	b = AppendHead(b, MajorBytes, uint64(len(p)))
	return append(b, p...)
}

// AppendText appends a definite-length text string. s must be valid UTF-8.
func AppendText(b []byte, s string) []byte {
	b = AppendHead(b, MajorText, uint64(len(s)))
	return append(b, s...)
}

// AppendNull appends the null simple value.
func AppendNull(b []byte) []byte { return append(b, Null) }

// AppendMapStart opens an indefinite-length map; close it with AppendBreak.
func AppendMapStart(b []byte) []byte { return append(b, indefMap) }

// AppendArrayStart opens an indefinite-length array; close it with AppendBreak.
func AppendArrayStart(b []byte) []byte { return append(b, indefArray) }

// AppendArrayHeader opens a definite-length array of n items.
func AppendArrayHeader(b []byte, n int) []byte { return AppendHead(b, MajorArray, uint64(n)) }

// AppendMapHeader opens a definite-length map of n pairs.
func AppendMapHeader(b []byte, n int) []byte { return AppendHead(b, MajorMap, uint64(n)) }

// AppendBreak closes an indefinite-length item.
func AppendBreak(b []byte) []byte { return append(b, Break) }
