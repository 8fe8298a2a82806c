// Package deadline gives a reader fed by a channel (the relay's and the peer
// path's PacketConns, whose packets arrive from a socket read elsewhere) the
// read deadline net.PacketConn promises: quic-go sets one in the past to
// stop its reader, and hole punching sets them to end an attempt.
//
// It exists so that the two places that need this share one tested piece
// instead of two copies.
package deadline

import (
	"sync"
	"time"
)

// Deadline is a settable point in time whose passing closes a channel.
// The zero value is not usable; use New.
type Deadline struct {
	mu    sync.Mutex
	ch    chan struct{}
	timer *time.Timer
}

// New returns a Deadline that is not set.
func New() *Deadline { return &Deadline{ch: make(chan struct{})} }

// Wait returns a channel closed once the deadline has passed. A reader
// selects on it next to its data channel; call Wait for each read, since
// Set replaces the channel.
func (d *Deadline) Wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

// Set sets the deadline to t; the zero t clears it. It always returns nil
// (the error is there to match net.Conn's setters).
func (d *Deadline) Set(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		if !d.timer.Stop() {
			// It fired: its func closes the old channel, perhaps only
			// after the check below, so that channel is done with.
			d.ch = make(chan struct{})
		}
		d.timer = nil
	}
	select {
	case <-d.ch: // passed: a fresh channel for the new deadline
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return nil
	}
	ch := d.ch
	if dur := time.Until(t); dur > 0 {
		d.timer = time.AfterFunc(dur, func() { close(ch) })
	} else {
		close(ch)
	}
	return nil
}
