package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func newFlags(name string) *flag.FlagSet { return flag.NewFlagSet(name, flag.ExitOnError) }

// serveLoop accepts on ln until ctx ends and runs handle per connection.
func serveLoop(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond) // EMFILE and friends
			continue
		}
		go handle(c)
	}
}

// runRawBackend serves the canned-hello protocol (see the package doc).
func runRawBackend(args []string) error {
	fs := newFlags("rawbackend")
	addr := fs.String("listen", "127.0.0.1:47500", "listen address")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	body := make([]byte, 256<<10)
	return serveLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(hdr[3:]))); err != nil {
			return
		}
		if _, err := c.Write([]byte{'S'}); err != nil {
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		var cmd [1]byte
		if _, err := c.Read(cmd[:]); err != nil || cmd[0] != 'D' {
			return // EOF: the rate and latency clients close after 'S'
		}
		for {
			if _, err := c.Write(body); err != nil {
				return
			}
		}
	})
}

// runTLSBackend serves TLS. After the handshake a client may send lines
// with a byte count; the backend answers each with that many bytes.
func runTLSBackend(args []string) error {
	fs := newFlags("backend")
	addr := fs.String("listen", "127.0.0.1:47501", "listen address")
	dir := fs.String("dir", "", "directory with cert.pem and key.pem")
	_ = fs.Parse(args)
	cert, err := tls.LoadX509KeyPair(filepath.Join(*dir, "cert.pem"), filepath.Join(*dir, "key.pem"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	body := make([]byte, 1<<20)
	return serveLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		tc := tls.Server(c, cfg)
		r := bufio.NewReader(tc)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
			if err != nil {
				return
			}
			for n > 0 {
				k := min(n, int64(len(body)))
				if _, err := tc.Write(body[:k]); err != nil {
					return
				}
				n -= k
			}
		}
	})
}

// checkRawBackend fails unless addr answers the canned hello with 'S'.
func checkRawBackend(addr string, hello []byte) error {
	_, err := firstByte(addr, hello, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	return nil
}
