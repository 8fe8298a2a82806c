package main

import (
	"io"
	"log"
	"net"
	"time"
)

// runPlainRelay is the reference point: a goroutine per direction,
// io.Copy between the raw TCP connections (splice on Linux), no ClientHello
// parsing, no routing, no limits: everything goes to one backend.
func runPlainRelay(args []string) error {
	fs := newFlags("plainrelay")
	addr := fs.String("listen", "127.0.0.1:47449", "listen address")
	backend := fs.String("backend", "127.0.0.1:47500", "backend address")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	return serveLoop(ctx, ln, func(c net.Conn) {
		b, err := net.DialTimeout("tcp", *backend, 5*time.Second)
		if err != nil {
			log.Printf("dial: %v", err)
			c.Close()
			return
		}
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(b, c)
			_ = b.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		_, _ = io.Copy(c, b)
		_ = c.(*net.TCPConn).CloseWrite()
		<-done
		c.Close()
		b.Close()
	})
}
