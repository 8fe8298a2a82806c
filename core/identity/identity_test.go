package identity

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(from, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(from + i)
	}
	return b
}

// Vectors from shared/protocols/boson.md §8.
func TestSeedVectors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		seed   []byte
		idHex  string
		base58 string
	}{
		{"zero seed", make([]byte, 32), "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29", "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"},
		{"ff seed", bytes.Repeat([]byte{0xff}, 32), "76a1592044a6e4f511265bca73a604d90b0529d1df602be30a19a9257660d1f5", "8z5oiZDBaCrP7ZCP1vQZbxkUt2eevdpPnyvpQAvAYuiL"},
		{"node A", seq(0, 32), "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8", "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"},
		{"node B", seq(0x20, 32), "29acbae141bccaf0b22e1a94d34d0bc7361e526d0bfe12c89794bc9322966dd7", "3ogUn1GNXoASaRbxPNeVJnVv5rG4EPBtmQmX61jVorUe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kp, err := FromSeed(tc.seed)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(kp.ID().Bytes()); got != tc.idHex {
				t.Errorf("id = %s, want %s", got, tc.idHex)
			}
			if got := kp.ID().String(); got != tc.base58 {
				t.Errorf("base58 = %s, want %s", got, tc.base58)
			}
			for _, form := range []string{tc.base58, "0x" + tc.idHex, "0X" + tc.idHex, DIDPrefix + tc.base58} {
				id, err := ParseID(form)
				if err != nil {
					t.Fatalf("ParseID(%q): %v", form, err)
				}
				if id != kp.ID() {
					t.Errorf("ParseID(%q) = %s", form, id)
				}
			}
		})
	}
}

func TestPrivateKeyVectors(t *testing.T) {
	for _, tc := range []struct{ key, id string }{
		{"253vmGfhqrrGrzqzxu9NBPGgZFA1iHqyeEJMMZem7ebBn8nApYgFX8diYpLFdb34vdPMutt1eAeW2tvWEWwJH9nP", "GMDVFJ5zdvS88Do5TbPAHnMHMsZt282A84KjfptVXQAb"},
		{"5P46autoGX9fifw4dV9c97xJTwPV7XKuxsq1sXZvc56uVFHsxPXLHqnjPL6vr8MU8XSmicv4XdBA6cMX6g8fg12E", "EgkqTSymRgMuSzPFYjwvcL22UiPmKwNfdRHgFULBBwqQ"},
		{"5nzta5SD3T2Dky66ZmkDN7rhyFZjHLUvXENosNTA495boCuP8DA8msqu85L7ZhydxiLw1MxGYUhsDydM6gbTpGP5", "AAqCZmUwD5hPAwNZBUsf1xsqsuWMUK74za3r6b9dgioD"},
		// Leading zero byte: the Base58 form starts with '1'.
		{"1GMkH3brNXiNNs1tiFZHu4yZSRrzJwxi5wB9bHFtMikjwpAW9DMZzU2Pqakc5it8X3N5vPmqdN7KF4CCUpmKhq", "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"},
	} {
		kp, err := ParsePrivateKey(tc.key)
		if err != nil {
			t.Fatalf("ParsePrivateKey(%s): %v", tc.key[:8], err)
		}
		if kp.ID().String() != tc.id {
			t.Errorf("%s…: id %s, want %s", tc.key[:8], kp.ID(), tc.id)
		}
		if kp.Base58() != tc.key {
			t.Errorf("Base58 round trip: %s, want %s", kp.Base58(), tc.key)
		}
		hexForm := "0x" + hex.EncodeToString(kp.PrivateKey())
		kp2, err := ParsePrivateKey(hexForm)
		if err != nil || kp2.ID() != kp.ID() {
			t.Errorf("hex form: %v %v", kp2, err)
		}
	}
}

func TestPrivateKeyRejectsMismatchedHalf(t *testing.T) {
	kp, _ := FromSeed(seq(0, 32))
	b := slices.Clone([]byte(kp.PrivateKey()))
	b[40] ^= 1
	if _, err := FromPrivateKey(b); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("want ErrInvalidKey, got %v", err)
	}
	for _, bad := range []string{"", "0x", "0xzz", "Il0O", "0x" + strings.Repeat("00", 63), strings.Repeat("z", 200)} {
		if _, err := ParsePrivateKey(bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePrivateKey(%q) = %v, want ErrInvalidKey", bad, err)
		}
	}
}

func TestX25519Vectors(t *testing.T) {
	for _, tc := range []struct {
		seed           []byte
		xPriv, xPublic string
	}{
		{seq(0, 32), "3894eea49c580aef816935762be049559d6d1440dede12e6a125f1841fff8e6f", "4701d08488451f545a409fb58ae3e58581ca40ac3f7f114698cd71deac73ca01"},
		{seq(0x20, 32), "887af58a36202e05c4c1cfec5bf6c61fad66bca851536004074b31f1b56e4a49", "5730800ab340fcb18ce5111eda9d705f91388b41e4544cbd103ba5942db2233e"},
		{make([]byte, 32), "5046adc1dba838867b2bbbfdd0c3423e58b57970b5267a90f57960924a87f156", "5bf55c73b82ebe22be80f3430667af570fae2556a6415e6b30d4065300aa947d"},
	} {
		kp, _ := FromSeed(tc.seed)
		sk := kp.X25519Private()
		if got := hex.EncodeToString(sk[:]); got != tc.xPriv {
			t.Errorf("x25519 private = %s, want %s", got, tc.xPriv)
		}
		pk, err := kp.ID().X25519Public()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(pk[:]); got != tc.xPublic {
			t.Errorf("x25519 public = %s, want %s", got, tc.xPublic)
		}
	}
	// The bootstrap node HZXXs9LT…uzhZ of boson.md §8.1.
	id, _ := IDFromBytes(mustHex(t, "f610197a374dfc3801cb00ad1acda6f7a52bb8e0bff10a3e0db2aacdcea41ed8"))
	pk, err := id.X25519Public()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(pk[:]); got != "627f8cc3c9884c76c9e5630d1f54b31bb4bc1e4b45c2c356519f0084ffdb044c" {
		t.Errorf("bootstrap x25519 public = %s", got)
	}
}

func TestX25519PublicRejectsNonPoint(t *testing.T) {
	// y = 2 is not on the curve (no square root for x²).
	var id ID
	id[0] = 2
	if _, err := id.X25519Public(); err == nil {
		t.Fatal("expected an error for a non-point id")
	}
}

// Signatures of the digests in boson.md §8.2 (v3.1 signed value and PeerInfo).
func TestSignVectors(t *testing.T) {
	kp, _ := FromSeed(seq(0, 32))
	for _, tc := range []struct{ digest, sig string }{
		{"afc17067d5a25317f50bf4032755823ff4c3f13dc7da9beb5ad78f2649920b69", "7fa505d95977936c3cfbf236af7750856505dfe1ee7396683e5b89bb49260e27e2232aa823d3624c2b5b3494867006a3bdac6ee867602902e8821e278731b407"},
		{"fca820a3f54e0c50f465a1074bbb6dc8a2e307c78e21df4b384bf37fa33b2a1f", "70afef4855264dc90b402a47ecfca79adeb57ecf316b82284d5584ffd6adb64d4d039773f59d849af9bacfa5b3da0abe4de7cf2ba961cefc6e4c783c82e32007"},
	} {
		digest := mustHex(t, tc.digest)
		sig := kp.Sign(digest)
		if got := hex.EncodeToString(sig); got != tc.sig {
			t.Errorf("sig = %s, want %s", got, tc.sig)
		}
		if !Verify(kp.ID(), digest, sig) {
			t.Error("Verify failed on own signature")
		}
		if Verify(kp.ID(), digest, sig[:63]) {
			t.Error("short signature verified")
		}
		digest[0] ^= 1
		if Verify(kp.ID(), digest, sig) {
			t.Error("signature verified over altered message")
		}
	}
}

func TestParseIDErrors(t *testing.T) {
	for _, bad := range []string{
		"", "0x", "0x1234", "did:boson:", "did:boson:0OIl", "not base58 0OIl",
		"0x" + strings.Repeat("ab", 33), strings.Repeat("1", 500),
		strings.Repeat("1", 31), // 31 zero bytes
	} {
		if _, err := ParseID(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ParseID(%q) = %v, want ErrInvalidID", bad, err)
		}
	}
}

func TestIDTextRoundTrip(t *testing.T) {
	for range 200 {
		var id ID
		rand.Read(id[:])
		id[0] = 0 // exercise leading-zero encoding half the time
		if id[1]&1 == 0 {
			id[1] = 0
		}
		got, err := ParseID(id.String())
		if err != nil || got != id {
			t.Fatalf("round trip %x: %v %v", id, got, err)
		}
		var u ID
		b, _ := id.MarshalText()
		if err := u.UnmarshalText(b); err != nil || u != id {
			t.Fatalf("text round trip %x: %v", id, err)
		}
	}
}

func TestDistance(t *testing.T) {
	a, _ := ParseID("0x00000000f528d6132c15787ed16f09b08a4e7de7e2c5d3838974711032cb7076")
	b, _ := ParseID("0x00000000f0a8d6132c15787ed16f09b08a4e7de7e2c5d3838974711032cb7076")
	want, _ := ParseID("0x0000000005800000000000000000000000000000000000000000000000000000")
	if d := Distance(a, b); d != want {
		t.Fatalf("distance = %x", d)
	}
	var target ID
	near, far := ID{0: 0x01}, ID{0: 0x80}
	if !CloserTo(target, near, far) || CloserTo(target, far, near) || CloserTo(target, near, near) {
		t.Fatal("CloserTo ordering wrong")
	}
	// CloserTo agrees with comparing Distance values.
	for range 500 {
		var x, y, z ID
		rand.Read(x[:])
		rand.Read(y[:])
		rand.Read(z[:])
		if CloserTo(x, y, z) != (Compare(Distance(x, y), Distance(x, z)) < 0) {
			t.Fatal("CloserTo disagrees with Distance/Compare")
		}
	}
}

func TestMnemonicRoundTrip(t *testing.T) {
	words, kp, err := NewMnemonic(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Fields(words)); n != MnemonicWords {
		t.Fatalf("%d words", n)
	}
	again, err := FromMnemonic("  " + strings.ToUpper(strings.ReplaceAll(words, " ", "\n ")) + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if again.ID() != kp.ID() {
		t.Fatal("recovered a different id")
	}
}

// A fixed phrase pins the derivation: if this changes, every user's
// recovery phrase stops working.
func TestMnemonicDerivationIsStable(t *testing.T) {
	const phrase = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
	kp, err := FromMnemonic(phrase)
	if err != nil {
		t.Fatal(err)
	}
	// Computed independently (Python hashlib/hmac): BIP-39 seed 5eb00bbd…e38e4,
	// then HMAC-SHA512 keyed "ed25519 seed", left half.
	const masterKeyOfAbandonAbout = "560f9f3c94558b6551928bb781cf6092c6b8800b4fc544af2c9444ed126d51aa"
	if got := hex.EncodeToString(kp.Seed()); got != masterKeyOfAbandonAbout {
		t.Errorf("seed = %s, want %s", got, masterKeyOfAbandonAbout)
	}
}

func TestMnemonicErrors(t *testing.T) {
	words, _, _ := NewMnemonic(rand.Reader)
	w := strings.Fields(words)
	for _, tc := range []struct {
		name, phrase, want string
	}{
		{"too few", strings.Join(w[:11], " "), "11 words, want 12"},
		{"too many", words + " abandon", "13 words, want 12"},
		{"unknown word", strings.Join(append(slices.Clone(w[:4]), append([]string{"notaword"}, w[5:]...)...), " "), `word 5 "notaword"`},
		// "abandon"×11 + "about" is valid; "abandon"×12 fails the checksum.
		{"wrong checksum word", strings.TrimSpace(strings.Repeat("abandon ", 12)), "checksum"},
		{"too long", strings.Repeat("a", 5000), "too long"},
	} {
		_, err := FromMnemonic(tc.phrase)
		if !errors.Is(err, ErrInvalidMnemonic) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "key")
	if _, err := LoadKeyFile(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	kp, _ := Generate(rand.Reader)
	if err := WriteKeyFile(path, kp); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != KeyFileMode {
		t.Fatalf("mode %v", st.Mode())
	}
	got, err := LoadKeyFile(path)
	if err != nil || got.ID() != kp.ID() {
		t.Fatalf("load: %v", err)
	}
	other, _ := Generate(rand.Reader)
	if err := WriteKeyFile(path, other); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("overwrite: %v", err)
	}
	if got, _ := LoadKeyFile(path); got.ID() != kp.ID() {
		t.Fatal("key replaced")
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "sub", ".key-*")); len(left) != 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestKeyFileDamage(t *testing.T) {
	kp, _ := FromSeed(seq(0, 32))
	good := []byte(kp.PrivateKey())
	flipped := slices.Clone(good)
	flipped[63] ^= 0x80
	for _, tc := range []struct {
		name string
		data []byte
		mode fs.FileMode
		want string
	}{
		{"empty", nil, 0o600, "0 bytes, want 64"},
		{"truncated", good[:40], 0o600, "40 bytes, want 64"},
		{"too long", append(slices.Clone(good), '\n'), 0o600, "more than 64 bytes"},
		{"public half damaged", flipped, 0o600, "does not match"},
		{"world readable", good, 0o644, "chmod 600"},
		{"group readable", good, 0o640, "chmod 600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(path, tc.data, tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tc.mode)
			_, err := LoadKeyFile(path)
			var kfe *KeyFileError
			if !errors.As(err, &kfe) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want KeyFileError containing %q", err, tc.want)
			}
			if errors.Is(err, fs.ErrNotExist) {
				t.Fatal("damaged key reported as missing")
			}
		})
	}
}

func BenchmarkParseIDBase58(b *testing.B) {
	const s = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseID(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIDString(b *testing.B) {
	kp, _ := FromSeed(seq(0, 32))
	id := kp.ID()
	b.ReportAllocs()
	for b.Loop() {
		_ = id.String()
	}
}

// CloserTo sits inside every routing-table sort and lookup step.
func BenchmarkCloserTo(b *testing.B) {
	var t, x, y ID
	rand.Read(t[:])
	rand.Read(x[:])
	copy(y[:], x[:])
	y[31] ^= 1 // worst case: differ in the last byte
	b.ReportAllocs()
	for b.Loop() {
		_ = CloserTo(t, x, y)
	}
}
