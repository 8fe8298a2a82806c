package wire

import (
	"github.com/elacity/pc2/core/identity"
)

// Record is what a name resolves to: the answer of a read, the body of a
// successful write, and the value the registry stores and publishes.
type Record struct {
	Name          string      `json:"name"`
	Owner         identity.ID `json:"owner"`
	Target        string      `json:"target"`
	HTTP          string      `json:"http,omitempty"`
	RedirectHTTPS bool        `json:"redirectHTTPS,omitempty"`
	DNSDirect     bool        `json:"dnsDirect,omitempty"`
	Created       int64       `json:"created"` // Unix seconds
	Updated       int64       `json:"updated"`
	Expires       int64       `json:"expires"`
	ACME          []TXT       `json:"acme,omitempty"`
	// Proof is the owner-signed request that set the current binding
	// (register, update or transfer), so that another supernode can check
	// the record without trusting this one.
	Proof Proof `json:"proof"`
}

// TXT is one ACME challenge value at _acme-challenge.<name>.
type TXT struct {
	Value   string `json:"value"`
	Expires int64  `json:"expires"`
}

// Proof holds the signed fields of a request that are not in the Record.
type Proof struct {
	Op        Op          `json:"op"`
	ID        identity.ID `json:"id"` // signer: the owner, or the previous owner for a transfer
	Timestamp int64       `json:"ts"`
	Nonce     string      `json:"nonce"`
	Sig       string      `json:"sig"`
	CoSig     string      `json:"coSig,omitempty"`
}

// Request rebuilds the request the proof signed.
func (r *Record) Request() *Request {
	q := &Request{
		Op: r.Proof.Op, Name: r.Name, ID: r.Proof.ID,
		Target: r.Target, HTTP: r.HTTP, RedirectHTTPS: r.RedirectHTTPS, DNSDirect: r.DNSDirect,
		Timestamp: r.Proof.Timestamp, Nonce: r.Proof.Nonce, Sig: r.Proof.Sig, CoSig: r.Proof.CoSig,
	}
	if r.Proof.Op == OpTransfer {
		owner := r.Owner
		q.NewOwner = &owner
	}
	return q
}

// VerifyProof checks that the record's binding was signed by its owner
// (or handed to it by a transfer both sides signed).
func (r *Record) VerifyProof() error {
	q := r.Request()
	if err := q.Check(); err != nil {
		return err
	}
	if q.Op != OpTransfer && q.ID != r.Owner {
		return ErrSignature
	}
	return q.Verify()
}

// Code is the machine-readable kind of an API error.
type Code string

const (
	CodeBadRequest   Code = "bad_request"   // 400: malformed, or a rule refused the name or endpoint
	CodeBadSignature Code = "bad_signature" // 401
	CodeStale        Code = "stale"         // 401: timestamp outside the allowed skew
	CodeForbidden    Code = "forbidden"     // 403: the name is someone else's
	CodeQuota        Code = "quota"         // 403: too many names for this id, or in total
	CodeNotFound     Code = "not_found"     // 404
	CodeTaken        Code = "taken"         // 409: first come, first served
	CodeReplay       Code = "replay"        // 409: nonce already used
	CodeTooLarge     Code = "too_large"     // 413
	CodeRateLimited  Code = "rate_limited"  // 429
	CodeInternal     Code = "internal"      // 500
	CodeUnavailable  Code = "unavailable"   // 503: busy (replay cache full) or stopping
)

// Response is the body of every API answer.
type Response struct {
	Error   string   `json:"error,omitempty"`
	Code    Code     `json:"code,omitempty"`
	Record  *Record  `json:"record,omitempty"`
	Records []Record `json:"records,omitempty"`
	Now     int64    `json:"now"` // the server's clock, so a client can see its own skew
}
