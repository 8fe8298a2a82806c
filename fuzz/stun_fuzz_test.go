package fuzz

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/elacity/pc2/transport/stun"
	pstun "github.com/pion/stun/v3"
)

// writeOwnSeeds writes (PC2_WRITE_SEEDS=1) or checks the seed corpus of one
// target, in the format of TestWriteSeedCorpus.
func writeOwnSeeds(t *testing.T, name string, seeds [][]byte) {
	dir := filepath.Join("testdata", "fuzz", name)
	if os.Getenv("PC2_WRITE_SEEDS") != "1" {
		if entries, err := os.ReadDir(dir); err != nil || len(entries) == 0 {
			t.Errorf("%s has no seed corpus (run with PC2_WRITE_SEEDS=1): %v", dir, err)
		}
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range seeds {
		sum := sha256.Sum256(s)
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%x", sum[:8])), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestTransportSeedCorpus(t *testing.T) {
	writeOwnSeeds(t, "FuzzSTUNServer", stunRequestSeeds())
	writeOwnSeeds(t, "FuzzSTUNResponse", stunResponseSeeds())
}

var fuzzTx = [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

func stunRequestSeeds() [][]byte {
	var out [][]byte
	for _, c := range []stun.Change{0, stun.ChangePort, stun.ChangeIP | stun.ChangePort} {
		for _, pad := range []int{0, 64, stun.PaddedRequest} {
			b, _ := stun.NewRequest(fuzzTx, c, pad)
			out = append(out, b)
		}
	}
	bare, _ := stun.NewRequest(fuzzTx, 0, 0)
	bare = append([]byte(nil), bare[:20]...)
	bare[2], bare[3] = 0, 0
	out = append(out, bare)
	// PADDING (RFC 5780), and an unknown comprehension-required attribute.
	m := &pstun.Message{Type: pstun.BindingRequest, TransactionID: fuzzTx}
	m.WriteHeader()
	m.Add(pstun.AttrPadding, make([]byte, 40))
	out = append(out, append([]byte(nil), m.Raw...))
	m.Add(pstun.AttrType(0x0777), []byte{1, 2, 3, 4})
	out = append(out, append([]byte(nil), m.Raw...))
	return out
}

func stunResponseSeeds() [][]byte {
	var out [][]byte
	req, _ := stun.NewRequest(fuzzTx, 0, stun.PaddedRequest)
	r, _ := stun.ParseRequest(req)
	for _, info := range []stun.AnswerInfo{
		{Observed: netip.MustParseAddrPort("203.0.113.10:4000")},
		{Observed: netip.MustParseAddrPort("203.0.113.10:4000"), Origin: netip.MustParseAddrPort("198.51.100.10:3478"),
			Other: netip.MustParseAddrPort("198.51.100.11:3479")},
		{Observed: netip.MustParseAddrPort("[2001:db8::1]:4000"), Origin: netip.MustParseAddrPort("[2001:db8::2]:3478")},
	} {
		b, _ := stun.AppendAnswer(nil, r, info)
		out = append(out, b)
	}
	e, _ := stun.AppendError(nil, r, 420, false)
	out = append(out, e)
	// An RFC 3489 answer: MAPPED-ADDRESS and CHANGED-ADDRESS.
	m := &pstun.Message{Type: pstun.BindingSuccess, TransactionID: fuzzTx}
	m.WriteHeader()
	_ = (&pstun.MappedAddress{IP: []byte{203, 0, 113, 9}, Port: 1234}).AddTo(m)
	_ = (&pstun.MappedAddress{IP: []byte{198, 51, 100, 11}, Port: 3479}).AddToAs(m, pstun.AttrChangedAddress)
	out = append(out, append([]byte(nil), m.Raw...))
	return out
}

// FuzzSTUNServer feeds any datagram to the server's decoder and answer
// builder and checks: no panic; only Binding requests within MaxMessage get
// an answer; the answer parses back with the request's transaction id and
// the observed address; it is never longer than the request unless it is
// the minimal answer (≤ 52 bytes: header, XOR-MAPPED-ADDRESS over IPv6,
// FINGERPRINT); with Strict it is never longer than the request; decoding
// allocates at most 48 times (errors included).
func FuzzSTUNServer(f *testing.F) {
	for _, s := range stunRequestSeeds() {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Add([]byte("\x00pc2-tunnel-wake/1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Bounded work: decoding allocates a small, size-independent amount.
		if allocs := testing.AllocsPerRun(1, func() { _, _ = stun.ParseRequest(b) }); allocs > 48 {
			t.Fatalf("ParseRequest allocated %.0f times on %d bytes", allocs, len(b))
		}
		req, err := stun.ParseRequest(b)
		if err != nil {
			return
		}
		if len(b) > stun.MaxMessage || !stun.IsRequest(b) || req.Size != len(b) {
			t.Fatalf("accepted %d bytes (max %d), request %v", len(b), stun.MaxMessage, stun.IsRequest(b))
		}
		for _, observed := range []string{"203.0.113.7:5000", "[2001:db8::7]:5000"} {
			for _, strict := range []bool{false, true} {
				info := stun.AnswerInfo{Observed: netip.MustParseAddrPort(observed), Strict: strict,
					Origin: netip.MustParseAddrPort("198.51.100.10:3478"), Other: netip.MustParseAddrPort("198.51.100.11:3479")}
				prefix := []byte("keep")
				out, err := stun.AppendAnswer(bytes.Clone(prefix), req, info)
				if !bytes.HasPrefix(out, prefix) {
					t.Fatalf("AppendAnswer clobbered its buffer's prefix")
				}
				out = out[len(prefix):]
				if err != nil {
					if !strict || len(out) != 0 {
						t.Fatalf("no answer (strict=%v): %v", strict, err)
					}
					continue
				}
				if len(out) > len(b) && (strict || len(out) > 52) {
					t.Fatalf("strict=%v: %d-byte answer to %d-byte request", strict, len(out), len(b))
				}
				r, err := stun.ParseResponse(out)
				if err != nil {
					t.Fatalf("own answer does not parse: %v", err)
				}
				if r.TxID != req.TxID || r.Mapped != info.Observed || r.ErrorCode != 0 {
					t.Fatalf("answer %+v for request %+v", r, req)
				}
			}
		}
	})
}

// FuzzSTUNResponse checks the client side: ParseResponse never panics,
// accepts only Binding responses within MaxMessage, and a success always
// carries a valid mapped address; Client.Deliver ignores anything that
// answers no transaction.
func FuzzSTUNResponse(f *testing.F) {
	for _, s := range stunResponseSeeds() {
		f.Add(s)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c := stun.NewClient(nil)
		if c.Deliver(b, netip.MustParseAddrPort("198.51.100.10:3478")) {
			t.Fatal("delivered an answer to no transaction")
		}
		r, err := stun.ParseResponse(b)
		if err != nil {
			return
		}
		if len(b) > stun.MaxMessage || !stun.IsResponse(b) {
			t.Fatalf("accepted %d bytes, response shape %v", len(b), stun.IsResponse(b))
		}
		if r.ErrorCode == 0 && !r.Mapped.IsValid() {
			t.Fatalf("success without a mapped address: %+v", r)
		}
		if r.ErrorCode != 0 && r.Mapped.IsValid() {
			t.Fatalf("error response with a mapped address: %+v", r)
		}
	})
}
