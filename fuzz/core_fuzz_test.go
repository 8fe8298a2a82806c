package fuzz

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
)

// FuzzParseID: any text either fails cleanly or names an id whose every
// text form parses back to the same id.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF",
		"0x03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
		"did:boson:4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
		"11111111111111111111111111111111", "0x", "did:boson:", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := identity.ParseID(s)
		if err != nil {
			return
		}
		for _, form := range []string{id.String(), id.Hex(), id.DID()} {
			back, err := identity.ParseID(form)
			if err != nil || back != id {
				t.Fatalf("%q parsed to %x but %q gives %x, %v", s, id, form, back, err)
			}
		}
	})
}

// FuzzParsePrivateKey: a key is accepted only if its public half matches
// its seed, and it round-trips through its Base58 form.
func FuzzParsePrivateKey(f *testing.F) {
	f.Add("253vmGfhqrrGrzqzxu9NBPGgZFA1iHqyeEJMMZem7ebBn8nApYgFX8diYpLFdb34vdPMutt1eAeW2tvWEWwJH9nP")
	f.Add("0x" + strings.Repeat("00", 64))
	f.Add("1GMkH3brNXiNNs1tiFZHu4yZSRrzJwxi5wB9bHFtMikjwpAW9DMZzU2Pqakc5it8X3N5vPmqdN7KF4CCUpmKhq")
	f.Fuzz(func(t *testing.T, s string) {
		kp, err := identity.ParsePrivateKey(s)
		if err != nil {
			return
		}
		if !bytes.Equal(kp.PrivateKey()[32:], ed25519.NewKeyFromSeed(kp.Seed())[32:]) {
			t.Fatal("accepted a key whose halves disagree")
		}
		back, err := identity.ParsePrivateKey(kp.Base58())
		if err != nil || back.ID() != kp.ID() {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzKeyFile: a key file loads if and only if it is exactly a valid
// 64-byte key; anything else is an error, never a panic.
func FuzzKeyFile(f *testing.F) {
	good, _ := identity.FromSeed(make([]byte, 32))
	f.Add([]byte(good.PrivateKey()))
	f.Add([]byte(good.PrivateKey())[:40])
	f.Add(append([]byte(good.PrivateKey()), '\n'))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "key")
		os.Remove(path)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		kp, err := identity.LoadKeyFile(path)
		valid := len(data) == 64 && bytes.Equal(data[32:], ed25519.NewKeyFromSeed(data[:32])[32:])
		if (err == nil) != valid {
			t.Fatalf("len %d: err=%v, valid=%v", len(data), err, valid)
		}
		if err == nil && !bytes.Equal(kp.PrivateKey(), data) {
			t.Fatal("loaded key differs from file")
		}
	})
}

// FuzzMnemonic: a phrase either fails with an error or recovers a key
// that its normalized form recovers too.
func FuzzMnemonic(f *testing.F) {
	f.Add("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about")
	f.Add("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon")
	f.Add("ZOO zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong")
	f.Fuzz(func(t *testing.T, s string) {
		kp, err := identity.FromMnemonic(s)
		if err != nil {
			return
		}
		again, err := identity.FromMnemonic(identity.NormalizeMnemonic(s))
		if err != nil || again.ID() != kp.ID() {
			t.Fatalf("normalized phrase recovers differently: %v", err)
		}
	})
}

// FuzzConfig: any file either loads into a configuration that validates,
// or fails with an error; service sections decode without panicking.
func FuzzConfig(f *testing.F) {
	for _, p := range []string{"../docs/config/supernode.yaml", "../docs/config/node.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("log:\n  level: debug\nshutdown:\n  drain: 1s\n"))
	f.Add([]byte("svc:\n  port: 1\n  names: [a, b]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("metrcs: 1\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return // bounded by config.MaxFileSize; keep iterations fast
		}
		path := filepath.Join(dir, "pc2.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(path, config.RoleNode, false, []string{"svc"})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Load accepted a config that does not validate: %v", err)
		}
		var svc struct {
			Port  int      `yaml:"port"`
			Names []string `yaml:"names"`
		}
		_ = c.Section("svc").Decode(&svc)
	})
}
