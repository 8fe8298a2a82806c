// Package client is the node's side of the name registry: it signs
// requests with the node's key and sends them to a supernode's
// registration API, keeps the node's names registered and renewed
// (Service), and carries the `pc2 name` commands (Commands).
//
// It uses net/http rather than fasthttp: it sends a handful of requests a
// month, and the standard client's timeouts, proxies and TLS are what a
// command-line tool should have.
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Client talks to one supernode's registry API.
type Client struct {
	// BaseURL is the API's root, e.g. "http://203.0.113.10:39002".
	BaseURL string
	// Key signs requests; it is the owner of the names.
	Key *identity.KeyPair
	// HTTP is the client used; default: 15 s timeout.
	HTTP *http.Client
	// Now gives request timestamps; default time.Now.
	Now func() time.Time
	// Rand gives nonces; default crypto/rand.
	Rand io.Reader
}

// Registration is what a name points to.
type Registration struct {
	Name          string
	Target        string // IP:port of the node's TLS service, or wire.TargetTunnel
	HTTP          string // IP:port of its plain HTTP service, optional
	RedirectHTTPS bool   // :80 answers with a redirect to https
	DNSDirect     bool   // DNS answers with the node's own address
}

// APIError is a refusal by the API.
type APIError struct {
	Status int
	Code   wire.Code
	Msg    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("registry: %s (%s, HTTP %d)", e.Msg, e.Code, e.Status)
}

// CodeOf returns the API code of err, or "" if err is not an APIError.
func CodeOf(err error) wire.Code {
	var e *APIError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// NormalName lowercases a name and drops a trailing dot: the form the
// signature covers.
func NormalName(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
}

func (c *Client) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 15 * time.Second}
}

// NewRequest returns an unsigned request of op on name, stamped now with
// a fresh nonce.
func (c *Client) NewRequest(op wire.Op, name string) (*wire.Request, error) {
	var n [wire.NonceSize]byte
	r := c.Rand
	if r == nil {
		r = rand.Reader
	}
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return &wire.Request{Op: op, Name: NormalName(name), ID: c.Key.ID(), Timestamp: c.now().Unix(), Nonce: hex.EncodeToString(n[:])}, nil
}

func (c *Client) bind(op wire.Op, reg Registration) (*wire.Request, error) {
	q, err := c.NewRequest(op, reg.Name)
	if err != nil {
		return nil, err
	}
	q.Target, q.HTTP, q.RedirectHTTPS, q.DNSDirect = reg.Target, reg.HTTP, reg.RedirectHTTPS, reg.DNSDirect
	return q, nil
}

// Register takes a free name, or renews (and updates) one of ours.
func (c *Client) Register(ctx context.Context, reg Registration) (*wire.Record, error) {
	return c.send(ctx, wire.OpRegister, reg, "")
}

// Update changes the endpoints of one of our names without renewing it.
func (c *Client) Update(ctx context.Context, reg Registration) (*wire.Record, error) {
	return c.send(ctx, wire.OpUpdate, reg, "")
}

// Delete frees one of our names.
func (c *Client) Delete(ctx context.Context, name string) error {
	_, err := c.send(ctx, wire.OpDelete, Registration{Name: name}, "")
	return err
}

// SetACME publishes value at _acme-challenge.<name> (DNS-01).
func (c *Client) SetACME(ctx context.Context, name, value string) (*wire.Record, error) {
	return c.send(ctx, wire.OpACMESet, Registration{Name: name}, value)
}

// DeleteACME removes value, or every value when it is empty.
func (c *Client) DeleteACME(ctx context.Context, name, value string) (*wire.Record, error) {
	return c.send(ctx, wire.OpACMEDelete, Registration{Name: name}, value)
}

// NewTransfer returns a transfer of name to newOwner, pointing at the new
// owner's endpoints in reg, signed by c.Key. The new owner co-signs it
// (wire.Request.CoSign) and either side submits it with Submit.
func (c *Client) NewTransfer(reg Registration, newOwner identity.ID) (*wire.Request, error) {
	q, err := c.bind(wire.OpTransfer, reg)
	if err != nil {
		return nil, err
	}
	q.NewOwner = &newOwner
	q.Sign(c.Key)
	return q, nil
}

// send builds, signs and submits a request. If the server says the
// timestamp is stale, it retries once stamped with the server's clock.
func (c *Client) send(ctx context.Context, op wire.Op, reg Registration, txt string) (*wire.Record, error) {
	q, err := c.bind(op, reg)
	if err != nil {
		return nil, err
	}
	if op == wire.OpDelete || op == wire.OpACMESet || op == wire.OpACMEDelete {
		q.Target, q.HTTP, q.RedirectHTTPS, q.DNSDirect = "", "", false, false
	}
	q.TXT = txt
	q.Sign(c.Key)
	rec, serverNow, err := c.submit(ctx, q)
	if CodeOf(err) == wire.CodeStale && serverNow > 0 {
		q2 := *q
		q2.Timestamp = serverNow
		if q2.Nonce, err = c.nonce(); err != nil {
			return nil, err
		}
		q2.Sign(c.Key)
		rec, _, err = c.submit(ctx, &q2)
	}
	return rec, err
}

func (c *Client) nonce() (string, error) {
	q, err := c.NewRequest(wire.OpDelete, "x")
	if err != nil {
		return "", err
	}
	return q.Nonce, nil
}

// Submit sends a signed request as it is.
func (c *Client) Submit(ctx context.Context, q *wire.Request) (*wire.Record, error) {
	rec, _, err := c.submit(ctx, q)
	return rec, err
}

func (c *Client) submit(ctx context.Context, q *wire.Request) (*wire.Record, int64, error) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.do(ctx, http.MethodPost, "/v1/names", body)
	if err != nil {
		return nil, respNow(resp), err
	}
	return resp.Record, resp.Now, nil
}

func respNow(r *wire.Response) int64 {
	if r == nil {
		return 0
	}
	return r.Now
}

// Get returns the record of name.
func (c *Client) Get(ctx context.Context, name string) (*wire.Record, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/names/"+url.PathEscape(NormalName(name)), nil)
	if err != nil {
		return nil, err
	}
	if resp.Record == nil {
		return nil, errors.New("registry: answer without a record")
	}
	return resp.Record, nil
}

// List returns the names of owner.
func (c *Client) List(ctx context.Context, owner identity.ID) ([]wire.Record, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/owners/"+owner.String()+"/names", nil)
	if err != nil {
		return nil, err
	}
	return resp.Records, nil
}

// maxResponse bounds what the client reads: a list of 10 full records is
// under 10 KiB.
const maxResponse = 1 << 20

func (c *Client) do(ctx context.Context, method, path string, body []byte) (*wire.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, rd)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("registry: read answer: %w", err)
	}
	if len(b) > maxResponse {
		return nil, errors.New("registry: answer too large")
	}
	var resp wire.Response
	if err := json.Unmarshal(b, &resp); err != nil {
		return nil, fmt.Errorf("registry: HTTP %d with an unreadable body: %w", res.StatusCode, err)
	}
	if res.StatusCode != http.StatusOK {
		return &resp, &APIError{Status: res.StatusCode, Code: resp.Code, Msg: resp.Error}
	}
	return &resp, nil
}
