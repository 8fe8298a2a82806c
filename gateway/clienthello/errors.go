package clienthello

import "errors"

// Kinds of failure. Every error returned by Read and Parse (other than a read
// error from the underlying connection, which is wrapped as is) is an *Error
// whose Kind is one of these, so errors.Is(err, ErrTooLarge) works.
var (
	// ErrNotTLS means the first bytes are not a TLS handshake record.
	ErrNotTLS = errors.New("not a tls handshake")
	// ErrTooLarge means the ClientHello did not complete within MaxSize bytes.
	ErrTooLarge = errors.New("clienthello too large")
	// ErrTruncated means the stream ended before the ClientHello was complete.
	ErrTruncated = errors.New("clienthello truncated")
	// ErrMalformed means the records or the ClientHello body violate the TLS encoding.
	ErrMalformed = errors.New("malformed clienthello")
	// ErrNoSNI means the ClientHello carries no server_name host_name.
	ErrNoSNI = errors.New("clienthello has no server name")
	// ErrBadServerName means the server name is not a valid DNS host name
	// (for example an IP literal, an empty label or a forbidden character).
	ErrBadServerName = errors.New("invalid server name")
)

// Error describes why a ClientHello was rejected.
type Error struct {
	Kind   error  // one of the Err* sentinels
	Reason string // fixed detail, safe to log
}

func (e *Error) Error() string { return "clienthello: " + e.Kind.Error() + ": " + e.Reason }

// Unwrap returns the Kind so errors.Is matches the sentinels.
func (e *Error) Unwrap() error { return e.Kind }

// The failures are preallocated so that rejecting garbage costs no allocation.
var (
	errNotHandshake   = &Error{ErrNotTLS, "first record is not a handshake record"}
	errRecordVersion  = &Error{ErrNotTLS, "record version is not 3.x"}
	errEmptyRecord    = &Error{ErrMalformed, "zero-length handshake record"}
	errRecordOverflow = &Error{ErrMalformed, "record longer than 2^14"}
	errInterleaved    = &Error{ErrMalformed, "non-handshake record inside the clienthello"}
	errNotClientHello = &Error{ErrMalformed, "first handshake message is not a clienthello"}
	errTooLarge       = &Error{ErrTooLarge, "exceeds the byte cap"}
	errTruncated      = &Error{ErrTruncated, "stream ended inside the clienthello"}
	errShortBody      = &Error{ErrMalformed, "clienthello body too short"}
	errSessionID      = &Error{ErrMalformed, "session id longer than 32"}
	errCipherSuites   = &Error{ErrMalformed, "bad cipher suites length"}
	errCompression    = &Error{ErrMalformed, "bad compression methods"}
	errExtensionsLen  = &Error{ErrMalformed, "extensions length does not match"}
	errExtension      = &Error{ErrMalformed, "extension overruns the block"}
	errDupExtension   = &Error{ErrMalformed, "duplicate extension"}
	errSNIList        = &Error{ErrMalformed, "bad server_name list"}
	errDupHostName    = &Error{ErrMalformed, "more than one host_name"}
	errALPNList       = &Error{ErrMalformed, "bad alpn list"}
	errNoSNI          = &Error{ErrNoSNI, "no server_name extension"}
	errNameLength     = &Error{ErrBadServerName, "length outside 1..253"}
	errNameLabel      = &Error{ErrBadServerName, "empty or over-long label"}
	errNameChar       = &Error{ErrBadServerName, "character outside letters, digits, hyphen"}
	errNameHyphen     = &Error{ErrBadServerName, "label starts or ends with a hyphen"}
	errNameNumeric    = &Error{ErrBadServerName, "numeric top label (ip literal)"}
)
