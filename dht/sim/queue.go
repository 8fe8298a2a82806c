package sim

// event kinds
const (
	evRequest    uint8 = iota // a request reaches its destination (a = rpc)
	evResponse                // a response reaches the requester (a = rpc)
	evTimeout                 // an rpc's deadline (a = rpc)
	evJoin                    // node a joins
	evTick                    // node a's maintenance tick
	evLookup                  // start planned lookup a
	evChurn                   // one node leaves, one joins
	evRefreshAll              // node a refreshes every bucket (after joining)
	evWake                    // lookup a passes a soft timeout
)

type event struct {
	at   int64 // virtual unix ns
	seq  uint64
	a    int32
	kind uint8
}

// eventQueue is a binary min-heap on (at, seq): written out rather than
// container/heap to avoid interface boxing on the hottest path.
type eventQueue []event

func (q eventQueue) less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}

func (q *eventQueue) push(e event) {
	*q = append(*q, e)
	h := *q
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (q *eventQueue) pop() event {
	h := *q
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	*q = h
	return top
}
