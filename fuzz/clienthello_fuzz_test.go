package fuzz

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/elacity/pc2/gateway/clienthello"
	"github.com/elacity/pc2/gateway/clienthello/hellotest"
)

// clientHelloSeeds are ClientHellos from crypto/tls clients of several
// configurations, Chrome-like hellos, and re-recorded variants.
func clientHelloSeeds() [][]byte {
	var seeds [][]byte
	for _, cfg := range hellotest.Configs("seed.ela.city") {
		raw := hellotest.MustCapture(cfg)
		seeds = append(seeds, raw, hellotest.Fragment(raw, 100))
	}
	seeds = append(seeds,
		hellotest.MustCapture(&tls.Config{InsecureSkipVerify: true}), // no SNI
		hellotest.ChromeLike("www.example.com"),
		hellotest.Fragment(hellotest.ChromeLike("frag.example"), 300),
		hellotest.ChromeLike("192.0.2.1"),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
	)
	return seeds
}

// validName is an independent statement of what the parser promises.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 253 || strings.ToLower(s) != s {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return strings.Trim(labels[len(labels)-1], "0123456789") != ""
}

func kindOf(err error) error {
	var e *clienthello.Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return err
}

func FuzzClientHello(f *testing.F) {
	for _, s := range clientHelloSeeds() {
		f.Add(s)
	}
	f.Fuzz(checkClientHello)
}

func checkClientHello(t *testing.T, data []byte) {
	{
		var h clienthello.Hello
		err := h.Parse(data)
		var perr *clienthello.Error
		if err != nil && !errors.As(err, &perr) {
			t.Fatalf("error %T is not *clienthello.Error: %v", err, err)
		}

		// Piecemeal arrival must give the same verdict: byte by byte for
		// short inputs, 1..13-byte pieces for long ones (cheaper, which
		// matters because the fuzzer's minimizer is quadratic).
		var in io.Reader = iotest.OneByteReader(bytes.NewReader(data))
		if len(data) > 512 {
			in = &chunkReader{b: data, size: 1 + len(data)%13}
		}
		rh, rerr := clienthello.Read(in)
		if kindOf(rerr) != kindOf(err) {
			t.Fatalf("Parse: %v, one-byte Read: %v", err, rerr)
		}
		checkResume(t, data, err, &h)
		if err != nil {
			return
		}
		defer rh.Release()
		name := h.ServerName()
		if rh.ServerName() != name || !slices.Equal(rh.ALPN(), h.ALPN()) {
			t.Fatalf("Read %q %q, Parse %q %q", rh.ServerName(), rh.ALPN(), name, h.ALPN())
		}
		if !validName(name) {
			t.Fatalf("accepted invalid name %q", name)
		}
		if raw := rh.Raw(); !bytes.HasPrefix(data, raw) || len(raw) > clienthello.MaxSize {
			t.Fatalf("Raw is not a bounded prefix of the input")
		}
		if !bytes.HasPrefix(data, h.Raw()) {
			t.Fatalf("Parse Raw is not a prefix of the input")
		}
		for i := 0; i < h.NumALPN(); i++ {
			if len(h.ALPNAt(i)) == 0 {
				t.Fatal("empty ALPN protocol")
			}
		}
		// Differential: where crypto/tls also parses it, the names agree.
		if ref, alpn, perr := hellotest.Peek(data); perr == nil && ref != "" {
			if strings.ToLower(strings.TrimSuffix(ref, ".")) != name {
				t.Fatalf("crypto/tls says %q, parser %q", ref, name)
			}
			if h.NumALPN() < clienthello.MaxALPN && !slices.Equal(alpn, h.ALPN()) {
				t.Fatalf("crypto/tls ALPN %q, parser %q", alpn, h.ALPN())
			}
		}
	}
}

// chunkReader returns at most size bytes per Read.
type chunkReader struct {
	b    []byte
	size int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.size)], r.b)
	r.b = r.b[n:]
	return n, nil
}

// checkResume feeds data to clienthello.Resume in pieces (one byte at a time
// for short inputs, a few large pieces for long ones, as a connection's
// reads would) and checks that it keeps exactly the bytes fed so far while
// the hello is incomplete, never more than MaxSize, and reaches Parse's
// verdict (at the end of the input an incomplete hello is truncated).
func checkResume(t *testing.T, data []byte, parseErr error, parsed *clienthello.Hello) {
	t.Helper()
	step := 1
	if len(data) > 512 {
		step = 1 + len(data)/7
	}
	var partial []byte
	fed := 0
	for {
		piece := data[fed:min(fed+step, len(data))]
		room := clienthello.MaxSize - len(partial)
		h, p, err := clienthello.Resume(partial, func(buf []byte) (int, error) { return copy(buf, piece), nil })
		fed += min(len(piece), room)
		if err == nil {
			if parseErr != nil {
				t.Fatalf("Resume accepted what Parse rejects (%v)", parseErr)
			}
			if h.ServerName() != parsed.ServerName() || !bytes.Equal(h.Raw(), data[:fed]) {
				t.Fatalf("Resume: %q with %d raw bytes, Parse: %q", h.ServerName(), len(h.Raw()), parsed.ServerName())
			}
			h.Release()
			return
		}
		if !errors.Is(err, clienthello.ErrTruncated) || fed == len(data) {
			if kindOf(err) != kindOf(parseErr) {
				t.Fatalf("Resume: %v, Parse: %v", err, parseErr)
			}
			return
		}
		if len(p) > clienthello.MaxSize || !bytes.Equal(p, data[:fed]) {
			t.Fatalf("Resume kept %d bytes, not the %d fed", len(p), fed)
		}
		partial = p
	}
}
