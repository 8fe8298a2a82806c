package record

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/elacity/pc2/core/cryptobox"
	"github.com/elacity/pc2/core/identity"
)

// Size limits on a value's data (boson.md §4.1). They keep a STORE_VALUE
// inside the 1200-byte IPv6 datagram budget.
const (
	MaxImmutableData = 1024
	MaxSignedData    = 896
	// MaxEncryptedData bounds the ciphertext (MAC included) of an encrypted value.
	MaxEncryptedData = 832
	// MaxEncryptedPlain is the largest plaintext an encrypted value can carry.
	MaxEncryptedPlain = MaxEncryptedData - cryptobox.Overhead
)

// SignatureSize is the length of an Ed25519 signature.
const SignatureSize = 64

// Signature is an Ed25519 signature.
type Signature [SignatureSize]byte

// Errors wrapped by Validate, ValidateV2 and the decoders.
var (
	// ErrMalformed means the fields do not form a record of any kind.
	ErrMalformed = errors.New("record: malformed")
	// ErrTooLarge means a size limit is exceeded.
	ErrTooLarge = errors.New("record: too large")
	// ErrSignature means a signature does not verify.
	ErrSignature = errors.New("record: bad signature")
	// ErrKey means an id is not a usable Ed25519 public key.
	ErrKey = errors.New("record: invalid key")
)

// Kind is the kind of a value, decided by which fields it carries.
type Kind uint8

// Value kinds.
const (
	Immutable Kind = iota
	Signed
	Encrypted
)

func (k Kind) String() string {
	switch k {
	case Immutable:
		return "immutable"
	case Signed:
		return "signed"
	case Encrypted:
		return "encrypted"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Value is a DHT value. The zero Owner marks an immutable value and the zero
// Recipient a value that is not encrypted; a decoder never produces an
// explicit all-zero id.
type Value struct {
	Owner     identity.ID     // k: owner public key (mutable values)
	Recipient identity.ID     // rec: recipient public key (encrypted values)
	Nonce     cryptobox.Nonce // n
	HasNonce  bool            // n present: encrypted values (v3.1), every mutable value (v2)
	Seq       int32           // seq: sequence number, >= 0
	Sig       Signature       // sig: present exactly when Owner is set
	Data      []byte          // v: data, or ciphertext (MAC ‖ ct) when encrypted
}

// Kind reports the kind of v.
func (v *Value) Kind() Kind {
	switch {
	case v.Owner.IsZero():
		return Immutable
	case v.Recipient.IsZero():
		return Signed
	default:
		return Encrypted
	}
}

// Mutable reports whether v has an owner.
func (v *Value) Mutable() bool { return !v.Owner.IsZero() }

// ID returns the v3.1 value id: the owner key for mutable values, else
// SHA-256 of the data.
func (v *Value) ID() identity.ID {
	if v.Mutable() {
		return v.Owner
	}
	return sha256.Sum256(v.Data)
}

// IDV2 returns the v2 value id: SHA-256(owner ‖ nonce) for mutable values,
// else SHA-256 of the data.
func (v *Value) IDV2() identity.ID {
	if !v.Mutable() {
		return sha256.Sum256(v.Data)
	}
	var b [identity.IDSize + cryptobox.NonceSize]byte
	copy(b[:], v.Owner[:])
	copy(b[identity.IDSize:], v.Nonce[:])
	return sha256.Sum256(b[:])
}

// maxSigned is the largest input the digest and v2 signed bytes can have for a
// value within the limits; larger (invalid) values are hashed on the heap.
const maxSigned = 2*identity.IDSize + cryptobox.NonceSize + 4 + MaxImmutableData

// Digest returns the v3.1 bytes the owner signs:
// SHA-256(k ‖ [rec ‖ n] ‖ seq:int32 BE ‖ v). For an immutable value it is
// SHA-256(v).
func (v *Value) Digest() [32]byte {
	var stack [maxSigned]byte
	b := stack[:0]
	if v.Mutable() {
		b = append(b, v.Owner[:]...)
		if !v.Recipient.IsZero() {
			b = append(b, v.Recipient[:]...)
			b = append(b, v.Nonce[:]...)
		}
		b = binary.BigEndian.AppendUint32(b, uint32(v.Seq))
	}
	b = append(b, v.Data...)
	return sha256.Sum256(b)
}

// AppendSignedBytesV2 appends the raw bytes a v2 owner signs:
// [rec] ‖ nonce ‖ seq:int32 BE ‖ data.
func (v *Value) AppendSignedBytesV2(dst []byte) []byte {
	if !v.Recipient.IsZero() {
		dst = append(dst, v.Recipient[:]...)
	}
	dst = append(dst, v.Nonce[:]...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(v.Seq))
	return append(dst, v.Data...)
}

// MaxData returns the data limit that applies to v's kind (v3.1).
func (v *Value) MaxData() int {
	switch v.Kind() {
	case Encrypted:
		return MaxEncryptedData
	case Signed:
		return MaxSignedData
	}
	return MaxImmutableData
}

// checkShape checks the field combinations every version requires.
func (v *Value) checkShape() error {
	if len(v.Data) == 0 {
		return fmt.Errorf("%w: value has no data", ErrMalformed)
	}
	if !v.Mutable() {
		if !v.Recipient.IsZero() || v.HasNonce || v.Seq != 0 || v.Sig != (Signature{}) {
			return fmt.Errorf("%w: immutable value with owner fields", ErrMalformed)
		}
		return nil
	}
	if v.Seq < 0 {
		return fmt.Errorf("%w: negative sequence number %d", ErrMalformed, v.Seq)
	}
	if !v.Recipient.IsZero() && !v.HasNonce {
		return fmt.Errorf("%w: encrypted value without nonce", ErrMalformed)
	}
	return nil
}

// Validate checks v by the v3.1 rules: field combinations, the size limit of
// its kind, the id of an immutable value (implicit) and the owner's signature.
// A storing node answers a failure with error 401 (invalid value).
func (v *Value) Validate() error {
	if err := v.checkShape(); err != nil {
		return err
	}
	if v.Mutable() && v.Recipient.IsZero() && v.HasNonce {
		return fmt.Errorf("%w: signed value carries a nonce (a v3.0 or v2 value)", ErrMalformed)
	}
	if n := len(v.Data); n > v.MaxData() {
		return fmt.Errorf("%w: %s value data is %d bytes, limit %d", ErrTooLarge, v.Kind(), n, v.MaxData())
	}
	if !v.Mutable() {
		return nil
	}
	d := v.Digest()
	if !identity.Verify(v.Owner, d[:], v.Sig[:]) {
		return fmt.Errorf("%w: value %s seq %d", ErrSignature, v.Owner, v.Seq)
	}
	return nil
}

// ValidateV2 checks v by the v2 rules: a mutable value carries a nonce and a
// signature over the raw v2 signed bytes. v2 has no per-kind size limit; the
// datagram bounds the data.
func (v *Value) ValidateV2() error {
	if err := v.checkShape(); err != nil {
		return err
	}
	if !v.Mutable() {
		return nil
	}
	if !v.HasNonce {
		return fmt.Errorf("%w: v2 mutable value without nonce", ErrMalformed)
	}
	var stack [maxSigned]byte
	msg := v.AppendSignedBytesV2(stack[:0])
	if !identity.Verify(v.Owner, msg, v.Sig[:]) {
		return fmt.Errorf("%w: v2 value %s seq %d", ErrSignature, v.Owner, v.Seq)
	}
	return nil
}

// Clone returns a deep copy of v that does not alias any input buffer.
func (v *Value) Clone() Value {
	c := *v
	c.Data = bytes.Clone(v.Data)
	return c
}

// Equal reports whether v and o carry the same fields.
func (v *Value) Equal(o *Value) bool {
	return v.Owner == o.Owner && v.Recipient == o.Recipient && v.HasNonce == o.HasNonce &&
		v.Nonce == o.Nonce && v.Seq == o.Seq && v.Sig == o.Sig && bytes.Equal(v.Data, o.Data)
}

// NewImmutable builds an immutable value.
func NewImmutable(data []byte) (Value, error) {
	v := Value{Data: bytes.Clone(data)}
	if err := v.checkShape(); err != nil {
		return Value{}, err
	}
	if len(data) > MaxImmutableData {
		return Value{}, fmt.Errorf("%w: immutable value data is %d bytes, limit %d", ErrTooLarge, len(data), MaxImmutableData)
	}
	return v, nil
}

// NewSigned builds a v3.1 signed value owned by owner.
func NewSigned(owner *identity.KeyPair, seq int32, data []byte) (Value, error) {
	v := Value{Owner: owner.ID(), Seq: seq, Data: bytes.Clone(data)}
	if err := v.checkShape(); err != nil {
		return Value{}, err
	}
	if len(data) > MaxSignedData {
		return Value{}, fmt.Errorf("%w: signed value data is %d bytes, limit %d", ErrTooLarge, len(data), MaxSignedData)
	}
	d := v.Digest()
	copy(v.Sig[:], owner.Sign(d[:]))
	return v, nil
}

// NewEncrypted builds a v3.1 encrypted value: plain is sealed for recipient
// with a fresh nonce read from rand, then signed by owner.
func NewEncrypted(owner *identity.KeyPair, recipient identity.ID, seq int32, plain []byte, rand io.Reader) (Value, error) {
	if len(plain) > MaxEncryptedPlain {
		return Value{}, fmt.Errorf("%w: encrypted value plaintext is %d bytes, limit %d", ErrTooLarge, len(plain), MaxEncryptedPlain)
	}
	var nonce cryptobox.Nonce
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return Value{}, fmt.Errorf("encrypted value nonce: %w", err)
	}
	v, err := seal(owner, recipient, nonce, seq, plain)
	if err != nil {
		return Value{}, err
	}
	d := v.Digest()
	copy(v.Sig[:], owner.Sign(d[:]))
	return v, nil
}

func seal(owner *identity.KeyPair, recipient identity.ID, nonce cryptobox.Nonce, seq int32, plain []byte) (Value, error) {
	if len(plain) == 0 {
		return Value{}, fmt.Errorf("%w: value has no data", ErrMalformed)
	}
	if recipient.IsZero() {
		return Value{}, fmt.Errorf("%w: zero recipient", ErrKey)
	}
	if seq < 0 {
		return Value{}, fmt.Errorf("%w: negative sequence number %d", ErrMalformed, seq)
	}
	key, err := cryptobox.Precompute(owner, recipient)
	if err != nil {
		return Value{}, fmt.Errorf("%w: recipient: %v", ErrKey, err)
	}
	return Value{
		Owner: owner.ID(), Recipient: recipient, Nonce: nonce, HasNonce: true, Seq: seq,
		Data: key.Seal(nil, plain, &nonce),
	}, nil
}

// NewSignedV2 builds a v2 mutable value in the slot nonce of owner's key.
func NewSignedV2(owner *identity.KeyPair, nonce cryptobox.Nonce, seq int32, data []byte) (Value, error) {
	v := Value{Owner: owner.ID(), Nonce: nonce, HasNonce: true, Seq: seq, Data: bytes.Clone(data)}
	if err := v.checkShape(); err != nil {
		return Value{}, err
	}
	copy(v.Sig[:], owner.Sign(v.AppendSignedBytesV2(nil)))
	return v, nil
}

// NewEncryptedV2 builds a v2 encrypted value: plain sealed for recipient with
// nonce, which is also the value's slot.
func NewEncryptedV2(owner *identity.KeyPair, recipient identity.ID, nonce cryptobox.Nonce, seq int32, plain []byte) (Value, error) {
	v, err := seal(owner, recipient, nonce, seq, plain)
	if err != nil {
		return Value{}, err
	}
	copy(v.Sig[:], owner.Sign(v.AppendSignedBytesV2(nil)))
	return v, nil
}

// Decrypt opens an encrypted value with the recipient's key and appends the
// plaintext to dst. It does not check the owner's signature; Validate first.
func (v *Value) Decrypt(dst []byte, recipient *identity.KeyPair) ([]byte, error) {
	if v.Kind() != Encrypted || !v.HasNonce {
		return nil, fmt.Errorf("%w: value is not encrypted", ErrMalformed)
	}
	if recipient.ID() != v.Recipient {
		return nil, fmt.Errorf("%w: value is encrypted for %s, not %s", ErrKey, v.Recipient, recipient.ID())
	}
	key, err := cryptobox.Precompute(recipient, v.Owner)
	if err != nil {
		return nil, fmt.Errorf("%w: owner: %v", ErrKey, err)
	}
	return key.Open(dst, v.Data, &v.Nonce)
}
