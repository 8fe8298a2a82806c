package peer

// SetDropDirect makes the direct path lose every datagram (punches
// included), in both directions as seen by this endpoint.
func (e *Endpoint) SetDropDirect(on bool) { e.pc.dropDirect.Store(on) }
