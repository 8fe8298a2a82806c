package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
)

// copyBufSize is the relay's chunk: large enough that a bulk transfer
// makes few stream writes (each wakes quic-go's connection loop; 128 KiB
// measured no faster), small enough to stay cheap per busy visitor.
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

// peeker is a stream that can wait for data without consuming it
// (quic.Stream.Peek blocks until len(b) bytes are there, or an error).
type peeker interface {
	io.Reader
	Peek(b []byte) (int, error)
}

// copyFromStream copies a stream to dst holding a pooled buffer only
// while data is queued: it waits with a one-byte Peek, so a visitor that
// is connected but silent costs no relay buffer in this direction.
func copyFromStream(dst io.Writer, src peeker) (int64, error) {
	var total int64
	var one [1]byte
	for {
		if n, err := src.Peek(one[:]); n == 0 {
			// Peek does not consume the FIN; Read must, or quic-go never
			// completes the stream and the peer never gets the stream
			// credit back (TestStreamCreditReturned).
			rn, rerr := src.Read(one[:])
			if rn > 0 {
				if _, werr := dst.Write(one[:rn]); werr != nil {
					return total, werr
				}
				total += int64(rn)
				continue
			}
			if rerr != nil {
				err = rerr
			}
			if errors.Is(err, io.EOF) {
				return total, nil
			}
			return total, err
		}
		bp := copyBufs.Get().(*[]byte)
		n, rerr := src.Read(*bp)
		var werr error
		if n > 0 {
			_, werr = dst.Write((*bp)[:n])
		}
		copyBufs.Put(bp)
		total += int64(n)
		switch {
		case werr != nil:
			return total, werr
		case errors.Is(rerr, io.EOF):
			return total, nil
		case rerr != nil:
			return total, rerr
		}
	}
}

// copyToStream copies a local connection to the stream; for a TCP
// connection it, too, holds a buffer only while bytes are queued
// (copyFromTCP), otherwise it falls back to copyPooled.
func copyToStream(st io.Writer, lc net.Conn) (int64, error) {
	ds, isData := st.(dataStream)
	tc, ok := lc.(*net.TCPConn)
	if ok && isData {
		return copyTCP(ds.TCPConn, tc)
	}
	if ok {
		return copyFromTCP(st, tc)
	}
	return copyPooled(st, lc)
}
