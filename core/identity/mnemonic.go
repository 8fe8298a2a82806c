package identity

import (
	"crypto/hmac"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/tyler-smith/go-bip39"
)

// MnemonicWords is the number of words of a PC2 recovery phrase.
const MnemonicWords = 12

// maxMnemonicText bounds the phrase text before it is split: twelve words
// of at most eight letters with generous spacing.
const maxMnemonicText = 1024

// ErrInvalidMnemonic is wrapped by every error FromMnemonic returns.
var ErrInvalidMnemonic = errors.New("invalid recovery phrase")

// NewMnemonic draws 128 bits from rand and returns the 12 words and the key
// pair they recover.
func NewMnemonic(rand io.Reader) (string, *KeyPair, error) {
	entropy := make([]byte, 16)
	if _, err := io.ReadFull(rand, entropy); err != nil {
		return "", nil, fmt.Errorf("generate recovery phrase: %w", err)
	}
	words, err := bip39.NewMnemonic(entropy)
	if err != nil {
		return "", nil, fmt.Errorf("generate recovery phrase: %w", err)
	}
	kp, err := FromMnemonic(words)
	if err != nil {
		return "", nil, err
	}
	return words, kp, nil
}

// NormalizeMnemonic lowercases the phrase and joins its words with single
// spaces, so that pasted text with line breaks or capitals still recovers.
func NormalizeMnemonic(s string) string {
	return strings.Join(strings.Fields(strings.ToLower(s)), " ")
}

// FromMnemonic recovers the key pair of a 12-word BIP-39 English phrase.
// Errors name the first unknown word and its position, or say that the
// checksum failed (a word is wrong or the order is).
func FromMnemonic(phrase string) (*KeyPair, error) {
	if len(phrase) > maxMnemonicText {
		return nil, fmt.Errorf("%w: %d characters is too long", ErrInvalidMnemonic, len(phrase))
	}
	words := strings.Fields(strings.ToLower(phrase))
	if len(words) != MnemonicWords {
		return nil, fmt.Errorf("%w: %d words, want %d", ErrInvalidMnemonic, len(words), MnemonicWords)
	}
	for i, w := range words {
		if _, ok := bip39.GetWordIndex(w); !ok {
			return nil, fmt.Errorf("%w: word %d %q is not in the BIP-39 English word list", ErrInvalidMnemonic, i+1, w)
		}
	}
	normalized := strings.Join(words, " ")
	if _, err := bip39.EntropyFromMnemonic(normalized); err != nil {
		return nil, fmt.Errorf("%w: checksum does not match: a word is wrong or the words are out of order", ErrInvalidMnemonic)
	}
	seed := bip39.NewSeed(normalized, "")
	return FromSeed(slip10MasterKey(seed))
}

// slip10MasterKey returns the Ed25519 master private key of SLIP-0010 for a
// BIP-39 seed: the left half of HMAC-SHA512 keyed with "ed25519 seed".
func slip10MasterKey(seed []byte) []byte {
	mac := hmac.New(sha512.New, []byte("ed25519 seed"))
	mac.Write(seed)
	return mac.Sum(nil)[:32]
}
