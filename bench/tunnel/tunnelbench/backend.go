package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/elacity/pc2/gateway/clienthello"
	"github.com/elacity/pc2/gateway/testcert"
)

func runCert(args []string) error {
	fs := flag.NewFlagSet("cert", flag.ExitOnError)
	dir := fs.String("dir", "", "output directory")
	_ = fs.Parse(args)
	cert, _, err := testcert.New(bulkName, "*.bench.test")
	if err != nil {
		return err
	}
	c, k, err := testcert.PEM(cert)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "cert.pem"), c, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(*dir, "key.pem"), k, 0o600)
}

// replayConn reads the already-consumed ClientHello bytes first.
type replayConn struct {
	net.Conn
	pre []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func runBackend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	addr := fs.String("listen", "127.0.0.1:47600", "listen address")
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
	context.AfterFunc(ctx, func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}}
	body := make([]byte, 256<<10)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Printf("accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go serveBackend(c, cfg, body)
	}
}

func serveBackend(c net.Conn, cfg *tls.Config, body []byte) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := clienthello.Read(c)
	if err != nil {
		return
	}
	name := h.ServerName()
	raw := append([]byte(nil), h.Raw()...)
	h.Release()
	_ = c.SetReadDeadline(time.Time{})
	if strings.HasPrefix(name, "hello.") {
		c.Write([]byte{1})
		return
	}
	tc := tls.Server(&replayConn{Conn: c, pre: raw}, cfg)
	r := bufio.NewReader(tc)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err != io.EOF && os.Getenv("TB_DEBUG") != "" {
				log.Printf("backend: %s: %v", name, err)
			}
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
}
