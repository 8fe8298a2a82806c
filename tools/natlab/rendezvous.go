package natlab

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/elacity/pc2/transport/punch"
)

// Rendezvous ports on the lab's rendezvous host.
const (
	RendezvousPort = 7000 // TCP: signalling between named lab peers
	RelayPort      = 7002 // UDP: PC2's relay (relay/circuit), run next to the server by the rendezvous agent
	// ReflectPort and the ReflectPorts-1 ports after it answer TCP
	// connections with "observed <addr:port>" and close (TCP mapping
	// discovery). A retry uses the next port: the previous attempt's
	// connection may still hold the 4-tuple.
	ReflectPort  = 7010
	ReflectPorts = 4
)

// Rendezvous limits: every input is bounded in size, count and time.
const (
	maxRendezvousLine    = 1024
	maxRendezvousClients = 1024
	rendezvousQueue      = 64
	reflectTimeout       = 5 * time.Second
)

var sessionRE = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// RendezvousServer is the lab's stand-in for the supernode's signalling: lab
// peers register by name over TCP and exchange opaque frames addressed to
// (peer, session); a TCP reflector tells a connection which address it came
// from (TCP mappings differ from UDP ones). Pairs that cannot punch meet
// through PC2's own relay (relay/circuit), which the rendezvous agent runs
// on RelayPort.
//
// Protocol (one line per frame, at most 1 KiB):
//
//	client → server: "hello <name>" once, then "to <peer> <session> <base64>"
//	server → client: "from <peer> <session> <base64>"
//
// Frames to unknown peers are dropped; a newer registration of a name
// replaces the older one.
type RendezvousServer struct {
	sig     *net.TCPListener
	reflect [ReflectPorts]*net.TCPListener

	mu      sync.Mutex
	clients map[string]*rdvClient
	wg      sync.WaitGroup
}

type rdvClient struct {
	name string
	conn net.Conn
	out  chan string
}

// ListenRendezvous binds the signalling and reflector sockets on addr.
func ListenRendezvous(addr netip.Addr) (*RendezvousServer, error) {
	s := &RendezvousServer{clients: map[string]*rdvClient{}}
	var err error
	if s.sig, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, RendezvousPort))); err != nil {
		return nil, fmt.Errorf("rendezvous: %w", err)
	}
	for i := range s.reflect {
		if s.reflect[i], err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, ReflectPort+uint16(i)))); err != nil {
			s.Close()
			return nil, fmt.Errorf("rendezvous reflect: %w", err)
		}
	}
	return s, nil
}

// Close closes every socket; Serve returns after it.
func (s *RendezvousServer) Close() {
	if s.sig != nil {
		s.sig.Close()
	}
	for _, l := range s.reflect {
		if l != nil {
			l.Close()
		}
	}
}

// Serve runs until ctx ends.
func (s *RendezvousServer) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, s.Close)
	defer stop()
	s.wg.Add(1 + len(s.reflect))
	go func() { defer s.wg.Done(); s.serveSignal(ctx) }()
	for _, l := range s.reflect {
		go func() { defer s.wg.Done(); s.serveReflect(ctx, l) }()
	}
	s.wg.Wait()
	s.mu.Lock()
	for _, c := range s.clients {
		c.conn.Close()
	}
	s.mu.Unlock()
	return nil
}

func (s *RendezvousServer) serveSignal(ctx context.Context) {
	for {
		c, err := s.sig.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go s.handleClient(c)
	}
}

func (s *RendezvousServer) handleClient(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, maxRendezvousLine)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(br)
	if err != nil {
		return
	}
	name, ok := strings.CutPrefix(line, "hello ")
	if !ok || !nodeNameRE.MatchString(name) {
		fmt.Fprintf(c, "error want 'hello <name>'\n")
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	cl := &rdvClient{name: name, conn: c, out: make(chan string, rendezvousQueue)}
	s.mu.Lock()
	if len(s.clients) >= maxRendezvousClients && s.clients[name] == nil {
		s.mu.Unlock()
		fmt.Fprintf(c, "error too many clients\n")
		return
	}
	if old := s.clients[name]; old != nil {
		old.conn.Close()
	}
	s.clients[name] = cl
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.clients[name] == cl {
			delete(s.clients, name)
		}
		s.mu.Unlock()
	}()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case l := <-cl.out:
				if _, err := io.WriteString(c, l); err != nil {
					c.Close()
					return
				}
			case <-done:
				return
			}
		}
	}()
	if _, err := io.WriteString(c, "ok\n"); err != nil {
		return
	}
	for {
		line, err := readLine(br)
		if err != nil {
			return
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "to" || !nodeNameRE.MatchString(f[1]) || !sessionRE.MatchString(f[2]) {
			continue // malformed frames change nothing
		}
		s.mu.Lock()
		dst := s.clients[f[1]]
		s.mu.Unlock()
		if dst == nil {
			continue
		}
		select {
		case dst.out <- "from " + name + " " + f[2] + " " + f[3] + "\n":
		default: // a peer that does not read loses frames, never blocks others
		}
	}
}

// readLine reads one line of at most maxRendezvousLine bytes.
func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errors.New("rendezvous: line too long")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

func (s *RendezvousServer) serveReflect(ctx context.Context, l *net.TCPListener) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		_ = c.SetDeadline(time.Now().Add(reflectTimeout))
		// The server closes first, so TIME_WAIT stays here and the
		// client's port is free for its listener and punches at once.
		fmt.Fprintf(c, "observed %v\n", netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		c.Close()
	}
}

// RendezvousClient is a lab peer's connection to the rendezvous server: it
// sends frames to (peer, session) and queues received frames per session.
type RendezvousClient struct {
	conn  net.Conn
	delay time.Duration
	outq  chan delayedFrame
	done  chan struct{}

	mu  sync.Mutex
	in  map[string]chan []byte
	err error
}

// DialRendezvous registers name with the server at addr. Frames sent are
// delayed by delay (emulated one-way latency).
func DialRendezvous(ctx context.Context, addr netip.AddrPort, name string, delay time.Duration) (*RendezvousClient, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("rendezvous: %w", err)
	}
	if _, err := fmt.Fprintf(c, "hello %s\n", name); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, maxRendezvousLine)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(br)
	if err != nil || line != "ok" {
		c.Close()
		return nil, fmt.Errorf("rendezvous: register %s: %q %v", name, line, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	rc := &RendezvousClient{conn: c, delay: delay, in: map[string]chan []byte{},
		outq: make(chan delayedFrame, 256), done: make(chan struct{})}
	go rc.read(br)
	go rc.write()
	return rc, nil
}

type delayedFrame struct {
	due  time.Time
	line string
}

// write sends queued frames in order, each once its emulated latency has
// passed.
func (rc *RendezvousClient) write() {
	for {
		select {
		case f := <-rc.outq:
			if d := time.Until(f.due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-rc.done:
					t.Stop()
					return
				}
			}
			if _, err := io.WriteString(rc.conn, f.line); err != nil {
				return
			}
		case <-rc.done:
			return
		}
	}
}

// Close ends the registration.
func (rc *RendezvousClient) Close() error {
	close(rc.done)
	return rc.conn.Close()
}

func (rc *RendezvousClient) queue(session string) chan []byte {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	q := rc.in[session]
	if q == nil {
		q = make(chan []byte, 16)
		rc.in[session] = q
	}
	return q
}

// Forget drops a finished session's queue.
func (rc *RendezvousClient) Forget(session string) {
	rc.mu.Lock()
	delete(rc.in, session)
	rc.mu.Unlock()
}

func (rc *RendezvousClient) read(br *bufio.Reader) {
	for {
		line, err := readLine(br)
		if err != nil {
			rc.mu.Lock()
			rc.err = err
			for _, q := range rc.in {
				close(q)
			}
			rc.in = map[string]chan []byte{}
			rc.mu.Unlock()
			return
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "from" || !sessionRE.MatchString(f[2]) {
			continue
		}
		b, err := base64.RawStdEncoding.DecodeString(f[3])
		if err != nil {
			continue
		}
		select {
		case rc.queue(f[2]) <- b:
		default: // unread sessions are bounded
		}
	}
}

// Send queues a frame to peer's session; frames leave in order, each after
// the emulated latency.
func (rc *RendezvousClient) Send(peer, session string, b []byte) error {
	line := "to " + peer + " " + session + " " + base64.RawStdEncoding.EncodeToString(b) + "\n"
	if len(line) > maxRendezvousLine {
		return errors.New("rendezvous: frame too long")
	}
	select {
	case rc.outq <- delayedFrame{due: time.Now().Add(rc.delay), line: line}:
		return nil
	case <-rc.done:
		return net.ErrClosed
	default:
		return errors.New("rendezvous: send queue full")
	}
}

// Recv returns the next frame of session.
func (rc *RendezvousClient) Recv(ctx context.Context, session string) ([]byte, error) {
	q := rc.queue(session)
	select {
	case b, ok := <-q:
		if !ok {
			return nil, fmt.Errorf("rendezvous: connection lost: %v", rc.err)
		}
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Signal returns a punch.Signal for one attempt with peer.
func (rc *RendezvousClient) Signal(peer, session string) punch.Signal {
	return &rdvSignal{rc: rc, peer: peer, session: session}
}

type rdvSignal struct {
	rc            *RendezvousClient
	peer, session string
}

func (s *rdvSignal) Send(ctx context.Context, m punch.SignalMsg) error {
	b, err := punch.MarshalSignal(m)
	if err != nil {
		return err
	}
	return s.rc.Send(s.peer, s.session, b)
}

func (s *rdvSignal) Recv(ctx context.Context) (punch.SignalMsg, error) {
	b, err := s.rc.Recv(ctx, s.session)
	if err != nil {
		return punch.SignalMsg{}, err
	}
	if string(b) == abortFrame {
		return punch.SignalMsg{}, errPeerAborted
	}
	return punch.UnmarshalSignal(b)
}

// abortFrame tells the peer that this side gave up on the trial (its
// signalling cannot be a punch message: those start with 1..3).
const abortFrame = "x!"

var errPeerAborted = errors.New("rendezvous: the peer aborted the trial")
