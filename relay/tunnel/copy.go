package tunnel

import (
	"io"
	"sync"
)

// copyBufSize is the relay's chunk: large enough that a bulk transfer
// makes few stream writes (each wakes quic-go's connection loop), small
// enough that thousands of concurrent visitors stay cheap.
const copyBufSize = 32 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyPooled is io.Copy with a pooled buffer and without the
// WriterTo/ReaderFrom shortcuts (between a socket and a QUIC stream they
// only allocate a buffer of their own).
func copyPooled(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}
