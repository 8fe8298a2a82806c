package cbor

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"testing"
)

func TestIntsShortestAndBack(t *testing.T) {
	cases := []struct {
		v   int64
		hex string
	}{
		{0, "00"}, {23, "17"}, {24, "1818"}, {255, "18ff"}, {256, "190100"},
		{65535, "19ffff"}, {65536, "1a00010000"}, {1 << 32, "1b0000000100000000"},
		{-1, "20"}, {-24, "37"}, {-25, "3818"}, {-1000, "3903e7"},
		{math.MaxInt64, "1b7fffffffffffffff"}, {math.MinInt64, "3b7fffffffffffffff"},
	}
	for _, c := range cases {
		b := AppendInt(nil, c.v)
		if hex.EncodeToString(b) != c.hex {
			t.Errorf("%d: %x, want %s", c.v, b, c.hex)
		}
		r := NewReader(b)
		v, err := r.ReadInt()
		if err != nil || v != c.v || r.Len() != 0 {
			t.Errorf("%d: read %d, %v", c.v, v, err)
		}
	}
	r := NewReader([]byte{0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0})
	if _, err := r.ReadInt(); !errors.Is(err, ErrRange) {
		t.Errorf("2^63: %v", err)
	}
	r = NewReader(AppendInt(nil, math.MaxInt32+1))
	if _, err := r.ReadInt32(); !errors.Is(err, ErrRange) {
		t.Errorf("int32 overflow: %v", err)
	}
}

func TestIndefiniteAndChunked(t *testing.T) {
	// {_ "k": (_ h'0102', h'03'), "t": (_ "ab", "c")}
	b, _ := hex.DecodeString("bf616b5f4201024103ff61747f6261626163ffff")
	r := NewReader(b)
	c, err := r.EnterMap()
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for {
		more, err := r.Next(&c)
		if err != nil {
			t.Fatal(err)
		}
		if !more {
			break
		}
		if _, err := r.ReadKey(); err != nil {
			t.Fatal(err)
		}
		s, _, err := r.ReadBytesOrText()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if !bytes.Equal(got[0], []byte{1, 2, 3}) || string(got[1]) != "abc" || r.Len() != 0 || r.depth != 0 {
		t.Fatalf("%x %q len %d depth %d", got[0], got[1], r.Len(), r.depth)
	}
	// A chunk of the wrong major type is malformed.
	r = NewReader([]byte{0x5f, 0x61, 'a', 0xff})
	if _, err := r.ReadBytes(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("mixed chunks: %v", err)
	}
}

func TestSkip(t *testing.T) {
	for _, h := range []string{
		"f93c00",             // half float
		"fa47c35000",         // float
		"fb3ff199999999999a", // double
		"f4", "f5", "f6", "f7", "f820",
		"c11a514b67b0",           // tag 1
		"a26161016162820203",     // {a:1, b:[2,3]}
		"bf61610161629f0102ffff", // indefinite
		"5f4201024103ff",
	} {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		r := NewReader(b)
		if err := r.Skip(); err != nil || r.Len() != 0 {
			t.Errorf("%s: %v, %d left", h, err, r.Len())
		}
	}
	for name, h := range map[string]string{
		"lone break":    "ff",
		"reserved info": "1c",
		"indef int":     "1f",
		"deep":          string(bytes.Repeat([]byte("81"), MaxDepth+1)) + "00",
		"deep tags":     string(bytes.Repeat([]byte("c1"), MaxDepth+1)) + "00",
		"huge array":    "9bffffffffffffffff",
		"huge string":   "5a7fffffff",
		"truncated map": "a2616101",
	} {
		b, _ := hex.DecodeString(h)
		r := NewReader(b)
		if err := r.Skip(); err == nil {
			t.Errorf("%s: skipped", name)
		}
	}
}

func TestTypeErrorsDoNotConsume(t *testing.T) {
	r := NewReader([]byte{0x61, 'x'})
	if _, err := r.ReadUint(); !errors.Is(err, ErrType) || r.Offset() != 0 {
		t.Fatalf("%v at %d", err, r.Offset())
	}
	if _, err := r.EnterMap(); !errors.Is(err, ErrType) || r.Offset() != 0 {
		t.Fatalf("%v at %d", err, r.Offset())
	}
	if _, err := r.ReadText(); err != nil {
		t.Fatal(err)
	}
	r = NewReader([]byte{0x62, 0xff, 0xfe})
	if _, err := r.ReadText(); !errors.Is(err, ErrUTF8) {
		t.Fatalf("invalid UTF-8: %v", err)
	}
}
