package fuzz

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/dht/message"
	"github.com/elacity/pc2/dht/packet"
	"github.com/elacity/pc2/dht/record"
)

// dhtGoldens returns the CBOR goldens of Boson's CompatibilityTests.
func dhtGoldens(tb testing.TB) [][]byte {
	tb.Helper()
	f, err := os.Open("../dht/message/testdata/compat_goldens.txt")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		if h, ok := strings.CutPrefix(sc.Text(), "cbor "); ok {
			b, err := hex.DecodeString(h)
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, b)
		}
	}
	return out
}

func dhtKey(tb testing.TB, first byte) *identity.KeyPair {
	tb.Helper()
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = first + byte(i)
	}
	kp, err := identity.FromSeed(seed)
	if err != nil {
		tb.Fatal(err)
	}
	return kp
}

// allocated runs fn and returns the bytes it allocated.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// allocBound is what decoding n bytes may allocate: a small multiple of the
// input (node and peer lists grow by doubling) plus slack, never anything
// sized by a length the input claims.
func allocBound(n int) uint64 { return uint64(8*n + 16384) }

// FuzzMessageDecode: in both dialects, any input either fails with a
// *DecodeError or decodes to a message that encodes, decodes back to an
// equal message and re-encodes to the same bytes (decode→encode→decode is
// a fixed point); decoding allocates at most allocBound(len(input)).
func FuzzMessageDecode(f *testing.F) {
	for _, g := range dhtGoldens(f) {
		f.Add(g)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, d := range []message.Dialect{message.V3, message.V2} {
			var m message.Message
			var err error
			if n := allocated(func() { err = m.Decode(data, d) }); n > allocBound(len(data)) {
				t.Fatalf("%v: decoding %d bytes allocated %d", d, len(data), n)
			}
			if err != nil {
				if _, ok := err.(*message.DecodeError); !ok {
					t.Fatalf("%v: error %T is not a *DecodeError", d, err)
				}
				continue
			}
			if d == message.V2 && m.Txid > 1<<31-1 {
				continue // v2 carries txids as int32; the encoder refuses larger ones
			}
			enc, err := m.Append(nil, d)
			if err != nil {
				t.Fatalf("%v: decoded message does not encode: %v", d, err)
			}
			var back message.Message
			if err := back.Decode(enc, d); err != nil {
				t.Fatalf("%v: re-decode: %v\n%x", d, err, enc)
			}
			if !back.Equal(&m) {
				t.Fatalf("%v: round trip changed the message\n first %+v\nsecond %+v", d, m, back)
			}
			enc2, _ := back.Append(nil, d)
			if !bytes.Equal(enc, enc2) {
				t.Fatalf("%v: encoding is not a fixed point", d)
			}
		}
	})
}

// FuzzDatagramOpen: B's codec opens arbitrary bytes. Only the genuine
// datagrams A sent (the seeds, and their sign-bit twins, a known weakness
// of Boson's framing) may authenticate, anything else is refused
// with an error and leaves no cached context; the cache stays bounded and
// an authenticated plaintext is exactly the datagram minus its overhead.
func FuzzDatagramOpen(f *testing.F) {
	a, b := dhtKey(f, 0), dhtKey(f, 0x20)
	// A fixed starting nonce: the seeds must be the same bytes in every
	// fuzzing process, since each one rebuilds them.
	ca, err := packet.New(a, packet.Config{Rand: bytes.NewReader(make([]byte, packet.NonceSize))})
	if err != nil {
		f.Fatal(err)
	}
	genuine := map[string]bool{}
	for _, g := range dhtGoldens(f)[:12] {
		p3, err := ca.Seal(nil, b.ID(), g, packet.IPv4)
		if err != nil {
			continue
		}
		p2, _ := ca.SealV2(nil, b.ID(), g, packet.IPv4)
		genuine[string(p3)], genuine[string(p2)] = true, true
		f.Add(p3)
		f.Add(p2)
	}
	for _, d := range bosonDatagrams(f) {
		genuine[string(d)] = true
		f.Add(d)
	}
	f.Add(make([]byte, packet.MinV3))
	cb, err := packet.New(b, packet.Config{Peers: 4, MaxNewPeersPerSecond: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out := make([]byte, 0, len(data))
		from, plain, framing, err := cb.OpenAny(out, data, packet.IPv4)
		if cb.Len() > 4 {
			t.Fatalf("cache grew to %d contexts", cb.Len())
		}
		if err != nil {
			if plain != nil {
				t.Fatal("plaintext returned with an error")
			}
			return
		}
		// The sign-flipped twin of a genuine datagram verifies too (same
		// X25519 key, see packet.twinKey); the codec accepts it only while
		// it has no context for the real sender, and reports the twin id.
		twin := bytes.Clone(data)
		twin[31] ^= 0x80
		if !genuine[string(data)] && !genuine[string(twin)] {
			t.Fatalf("forged datagram authenticated: %x", data)
		}
		if genuine[string(twin)] {
			if from == a.ID() {
				t.Fatal("twin reported as the real sender")
			}
			return
		}
		over := packet.OverheadV3
		if framing == packet.FramingV2 {
			over = packet.OverheadV2
		}
		if from != a.ID() || len(plain) != len(data)-over {
			t.Fatalf("from %s, %d plaintext bytes of %d", from, len(plain), len(data))
		}
		var m message.Message
		if err := m.Decode(plain, message.V3); err != nil {
			t.Fatalf("genuine plaintext does not decode: %v", err)
		}
	})
}

// FuzzRecordDecode: the value and peer map decoders either fail cleanly
// or give a record that re-encodes and decodes back equal; validation of a
// decoded record never panics, and decoding allocates at most
// allocBound(len(input)).
func FuzzRecordDecode(f *testing.F) {
	for _, s := range recordSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v record.Value
		var err error
		if n := allocated(func() { err = v.DecodeCBOR(data) }); n > allocBound(len(data)) {
			t.Fatalf("value decode allocated %d", n)
		}
		if err == nil {
			var back record.Value
			if err := back.DecodeCBOR(v.AppendCBOR(nil)); err != nil || !back.Equal(&v) {
				t.Fatalf("value round trip: %v", err)
			}
			_ = v.Validate()
			_ = v.ValidateV2()
			_, _ = record.CheckValueStore(&v, &back, v.Seq)
		}
		var p record.PeerInfo
		if n := allocated(func() { err = p.DecodeCBOR(data) }); n > allocBound(len(data)) {
			t.Fatalf("peer decode allocated %d", n)
		}
		if err == nil {
			var back record.PeerInfo
			if err := back.DecodeCBOR(p.AppendCBOR(nil)); err != nil || !back.Equal(&p) {
				t.Fatalf("peer round trip: %v", err)
			}
			_ = p.Validate()
		}
	})
}

// recordSeeds are valid records of every kind, in their CBOR map forms.
func recordSeeds(tb testing.TB) [][]byte {
	a, b := dhtKey(tb, 0), dhtKey(tb, 0x20)
	var nonce cryptobox.Nonce
	nonce[0] = 1
	imm, _ := record.NewImmutable([]byte("hello boson"))
	sv, _ := record.NewSigned(a, 3, []byte("hello boson"))
	ev, _ := record.NewEncryptedV2(a, b.ID(), nonce, 2, []byte("secret")) // deterministic nonce
	v2, _ := record.NewSignedV2(a, nonce, 3, []byte("hello boson"))
	p1, _ := record.NewPeer(a, nil, 0, 4660, "tcp://203.0.113.10:9090", nil)
	p2, _ := record.NewPeer(a, b, 1, 4660, "https://example.com/", []byte(`{"k":"v"}`))
	return [][]byte{
		imm.AppendCBOR(nil), sv.AppendCBOR(nil), ev.AppendCBOR(nil), v2.AppendCBOR(nil),
		p1.AppendCBOR(nil), p2.AppendCBOR(nil),
	}
}

// TestWriteDHTSeedCorpus regenerates the seed files under
// testdata/fuzz/ when PC2_WRITE_SEEDS=1 (the same seeds the targets add
// with f.Add, stored so `go test ./fuzz` replays them without fuzzing).
func TestWriteDHTSeedCorpus(t *testing.T) {
	if os.Getenv("PC2_WRITE_SEEDS") != "1" {
		t.Skip("set PC2_WRITE_SEEDS=1 to rewrite the DHT seed corpus")
	}
	write := func(target string, seeds [][]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
			name := filepath.Join(dir, "seed-"+strconv.Itoa(i))
			if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("FuzzMessageDecode", dhtGoldens(t))
	write("FuzzRecordDecode", recordSeeds(t))
	write("FuzzDatagramOpen", bosonDatagrams(t))
}

// bosonDatagrams are the boson.md §8.2 PING datagrams from A to B: v3 with
// nonce 01..18, and v2.
func bosonDatagrams(tb testing.TB) [][]byte {
	const a = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
	v3, err := hex.DecodeString(a + "0102030405060708090a0b0c0d0e0f101112131415161718" +
		"1e1240dce109e48fe00f4b159984a9f7" + "5d194ff526bf817f97519520739778ac")
	if err != nil {
		tb.Fatal(err)
	}
	v2, err := hex.DecodeString(a + "200b4e21738f54b327386ebbd8c27aa8" + "9b7aeb607946a03e000576a22ba63601")
	if err != nil {
		tb.Fatal(err)
	}
	return [][]byte{v3, v2}
}
