package natlab

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/relay/circuit"
	"github.com/elacity/pc2/transport/punch"
	"github.com/elacity/pc2/transport/quicid"
	"github.com/elacity/pc2/transport/udpmux"
)

// TrialCmd tells a lab peer agent to run one side of a trial.
type TrialCmd struct {
	ID        string `json:"id"` // rendezvous session, unique per trial
	Peer      string `json:"peer"`
	Initiator bool   `json:"initiator"`
	Transport string `json:"transport"` // "udp" or "tcp"
	Relay     bool   `json:"relay"`     // fall back to PC2's relay on the rendezvous host
	Seed      uint64 `json:"seed"`      // birthday probe order
}

// TrialSide is one side's report of a trial.
type TrialSide struct {
	ID string `json:"id"`
	// OK: a direct path was confirmed on this side; PeerOK: the peer said
	// the same (exchanged through the rendezvous after punching).
	OK     bool   `json:"ok"`
	PeerOK bool   `json:"peer_ok"`
	Path   string `json:"path"` // direct, birthday, relay or ""
	Relay  bool   `json:"relay_ok"`
	Hard   bool   `json:"hard"`
	// Packets sent (punches and acks), birthday probes, sockets, TCP dials.
	Sent    int `json:"sent"`
	Probes  int `json:"probes"`
	Sockets int `json:"sockets"`
	Dials   int `json:"dials"`
	// Signalling RTT measured by the attempt; Sync → first authenticated
	// direct packet; Sync → both directions confirmed; whole trial;
	// relay start → relay confirmed.
	RTTMicros       int64  `json:"rtt_us"`
	FirstMicros     int64  `json:"first_us"`
	ConfirmedMicros int64  `json:"confirmed_us"`
	TotalMicros     int64  `json:"total_us"`
	RelayMicros     int64  `json:"relay_us,omitempty"`
	Err             string `json:"err,omitempty"`
	Detail          string `json:"detail,omitempty"` // diagnostics of a failed attempt
}

// peerAgent is the long-running agent of one lab host in a matrix run: it
// registers with the rendezvous server, learns whether its NAT's mapping is
// destination-dependent, then runs trials read from stdin, one at a time,
// and prints one JSON TrialSide per trial.
type peerAgent struct {
	name       string
	probe, alt netip.AddrPort
	rdv        netip.Addr
	latency    time.Duration
	hard       bool
	rc         *RendezvousClient
	key        *identity.KeyPair // this agent's node key (relay trials)
	relay      netip.AddrPort    // PC2 relay (relay/circuit) on the rendezvous host
	relayID    identity.ID
}

func runPeerAgent(ctx context.Context, name string, probe, alt netip.AddrPort, rdv netip.Addr, relayID identity.ID, latency time.Duration, stdin io.Reader, stdout io.Writer) error {
	pa := &peerAgent{name: name, probe: probe, alt: alt, rdv: rdv, latency: latency, relayID: relayID}
	if !relayID.IsZero() {
		pa.relay = netip.AddrPortFrom(rdv, RelayPort)
	}
	var err error
	if pa.key, err = identity.Generate(crand.Reader); err != nil {
		return err
	}
	hard, err := mappingIsHard(ctx, probe, alt)
	if err != nil {
		return fmt.Errorf("peer %s: classify mapping: %w", name, err)
	}
	pa.hard = hard
	if pa.rc, err = DialRendezvous(ctx, netip.AddrPortFrom(rdv, RendezvousPort), name, latency); err != nil {
		return err
	}
	defer pa.rc.Close()
	fmt.Fprintf(stdout, "ready hard=%v\n", hard)
	enc := json.NewEncoder(stdout)
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 4096), 4096)
	for sc.Scan() {
		var cmd TrialCmd
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			return fmt.Errorf("peer %s: bad command: %w", name, err)
		}
		tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		side := pa.trial(tctx, cmd)
		cancel()
		pa.rc.Forget(cmd.ID)
		if err := enc.Encode(side); err != nil {
			return err
		}
	}
	return sc.Err()
}

// mappingIsHard asks the probe server's primary and alternate endpoints
// from one socket: different observed endpoints mean a destination-dependent
// (symmetric) mapping.
func mappingIsHard(ctx context.Context, probe, alt netip.AddrPort) (bool, error) {
	c, err := listenUDP()
	if err != nil {
		return false, err
	}
	defer c.Close()
	r1, err := Query(ctx, c, probe, 0, 0, DefaultTiming.patient())
	if err != nil {
		return false, err
	}
	r2, err := Query(ctx, c, alt, 0, 0, DefaultTiming.patient())
	if err != nil {
		return false, err
	}
	return r1.Observed != r2.Observed, nil
}

func (pa *peerAgent) trial(ctx context.Context, cmd TrialCmd) TrialSide {
	t0 := time.Now()
	side := TrialSide{ID: cmd.ID, Hard: pa.hard}
	var err error
	switch cmd.Transport {
	case "udp":
		err = pa.udpTrial(ctx, cmd, &side)
	case "tcp":
		err = pa.tcpTrial(ctx, cmd, &side)
	default:
		err = fmt.Errorf("unknown transport %q", cmd.Transport)
	}
	if err == nil {
		err = pa.finish(ctx, cmd, &side)
	} else if !errors.Is(err, errPeerAborted) {
		// Tell the peer at once instead of leaving it waiting for frames
		// that will not come.
		_ = pa.rc.Send(cmd.Peer, cmd.ID, []byte(abortFrame))
	}
	if err != nil {
		side.Err = err.Error()
	}
	side.TotalMicros = time.Since(t0).Microseconds()
	return side
}

func (pa *peerAgent) role(cmd TrialCmd) punch.Role {
	if cmd.Initiator {
		return punch.Initiator
	}
	return punch.Responder
}

func (pa *peerAgent) offer(cmd TrialCmd) punch.Offer {
	o := punch.Offer{Hard: pa.hard}
	if cmd.Initiator {
		n := punch.NewOffer()
		o.Attempt, o.Token = n.Attempt, n.Token
	}
	return o
}

func (pa *peerAgent) udpTrial(ctx context.Context, cmd TrialCmd, side *TrialSide) error {
	c, err := listenUDP()
	if err != nil {
		return err
	}
	defer c.Close()
	rep, err := Query(ctx, c, pa.probe, 0, 0, DefaultTiming.patient())
	if err != nil {
		return fmt.Errorf("reflexive address: %w", err)
	}
	o := pa.offer(cmd)
	o.UDP = []netip.AddrPort{rep.Observed, localEndpoint(c, pa.probe)}
	plan, err := punch.Negotiate(ctx, pa.rc.Signal(cmd.Peer, cmd.ID), pa.role(cmd), o)
	if err != nil {
		return err
	}
	side.RTTMicros = plan.RTT.Microseconds()
	var extra []io.Closer
	defer func() {
		for _, x := range extra {
			x.Close()
		}
	}()
	cfg := punch.Config{
		Rand: rand.New(rand.NewPCG(cmd.Seed, uint64(len(pa.name)))),
		Listen: func() (punch.PacketConn, error) {
			x, err := listenUDP()
			if err != nil {
				return nil, err
			}
			extra = append(extra, x)
			return NewDelayConn(x, pa.latency), nil
		},
	}
	res, err := punch.PunchUDP(ctx, NewDelayConn(c, pa.latency), plan, cfg)
	side.Sent, side.Probes, side.Sockets = res.Sent, res.Probes, res.Sockets
	side.FirstMicros, side.ConfirmedMicros = res.FirstDirect.Microseconds(), res.Confirmed.Microseconds()
	side.Detail = res.String()
	if res.OK {
		side.OK = true
		side.Path = string(res.Path)
	}
	if err != nil && !errors.Is(err, punch.ErrNoPath) && !errors.Is(err, punch.ErrBothHard) {
		return err
	}
	return nil
}

func (pa *peerAgent) tcpTrial(ctx context.Context, cmd TrialCmd, side *TrialSide) error {
	ln, err := punch.ListenTCP(ctx, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		return err
	}
	defer ln.Close()
	local := ln.Addr().(*net.TCPAddr).AddrPort()
	mapped, err := reflectTCP(ctx, local, pa.rdv)
	if err != nil {
		return fmt.Errorf("tcp mapping: %w", err)
	}
	o := pa.offer(cmd)
	o.TCP = []netip.AddrPort{mapped}
	plan, err := punch.Negotiate(ctx, pa.rc.Signal(cmd.Peer, cmd.ID), pa.role(cmd), o)
	if err != nil {
		return err
	}
	side.RTTMicros = plan.RTT.Microseconds()
	conn, res, err := punch.PunchTCP(ctx, ln, plan, punch.TCPConfig{})
	side.Dials = res.Dials
	if !res.OK {
		side.Detail = fmt.Sprintf("accepts %d, hello failures %d, last dial error: %s", res.Accepts, res.HelloFails, res.DialErr)
	}
	if res.OK {
		conn.Close()
		side.OK = true
		side.Path = string(punch.PathDirect)
		side.FirstMicros, side.ConfirmedMicros = res.FirstDirect.Microseconds(), res.FirstDirect.Microseconds()
	}
	if err != nil && !errors.Is(err, punch.ErrNoPath) {
		return err
	}
	return nil
}

// reflectTCP connects from local (a port shared with a listener) to the
// rendezvous reflector and returns the address it saw. A lost SYN or
// SYN-ACK raises the kernel's RTO to 3 s for the connection, so a slow
// answer is abandoned and asked again on a new connection.
func reflectTCP(ctx context.Context, local netip.AddrPort, server netip.Addr) (netip.AddrPort, error) {
	var err error
	for i := range ReflectPorts {
		var ap netip.AddrPort
		if ap, err = reflectTCPOnce(ctx, local, netip.AddrPortFrom(server, ReflectPort+uint16(i))); err == nil || ctx.Err() != nil {
			return ap, err
		}
	}
	return netip.AddrPort{}, err
}

func reflectTCPOnce(ctx context.Context, local, server netip.AddrPort) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := punch.DialerFrom(local).DialContext(ctx, "tcp", server.String())
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	line, err := bufio.NewReaderSize(io.LimitReader(c, 128), 128).ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, err
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), "observed ")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("reflector said %q", line)
	}
	// Wait for the server's close so that the port is free of this
	// connection when the punch starts.
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1))
	return netip.ParseAddrPort(rest)
}

// finish tells the peer whether this side found a direct path, learns the
// peer's verdict, and falls back to the relay when either side failed.
func (pa *peerAgent) finish(ctx context.Context, cmd TrialCmd, side *TrialSide) error {
	st := []byte("s0")
	if side.OK {
		st[1] = '1'
	}
	if err := pa.rc.Send(cmd.Peer, cmd.ID, st); err != nil {
		return err
	}
	for {
		b, err := pa.rc.Recv(ctx, cmd.ID)
		if err != nil {
			return fmt.Errorf("peer status: %w", err)
		}
		if string(b) == abortFrame {
			return errPeerAborted
		}
		if len(b) == 2 && b[0] == 's' {
			side.PeerOK = b[1] == '1'
			break
		}
	}
	if side.OK && side.PeerOK || !cmd.Relay {
		return nil
	}
	side.Path = ""
	return pa.relayTrial(ctx, cmd, side)
}

// relayTrial connects the two sides through PC2's own relay
// (relay/circuit) on the rendezvous host, the path of last resort: both
// sides dial the relay from a fresh socket, the responder reserves, the
// initiator connects to it by node id (the relay asks the responder, which
// accepts only the peer of this trial), and an end-to-end QUIC connection,
// ids checked both ways, echoes a message through the session. The relay
// forwards packets it cannot read.
func (pa *peerAgent) relayTrial(ctx context.Context, cmd TrialCmd, side *TrialSide) error {
	if !pa.relay.IsValid() {
		return errors.New("relay fallback: no relay (-relay, -relay-id)")
	}
	t0 := time.Now()
	// Ids first: each side must know whom to accept or expect.
	if err := pa.rc.Send(cmd.Peer, cmd.ID, []byte("k"+pa.key.ID().String())); err != nil {
		return err
	}
	peerKey, err := pa.recvFrame(ctx, cmd.ID, "k")
	if err != nil {
		return fmt.Errorf("relay signalling: %w", err)
	}
	peerID, err := identity.ParseID(peerKey)
	if err != nil {
		return fmt.Errorf("relay signalling: peer id: %w", err)
	}
	c, err := listenUDP()
	if err != nil {
		return err
	}
	mux, err := udpmux.New(c, udpmux.Options{})
	if err != nil {
		c.Close()
		return err
	}
	defer mux.Close()
	cli, err := circuit.Dial(ctx, mux.Transport(), delayWriter{mux, pa.latency}, pa.key, pa.relay, pa.relayID,
		circuit.ClientConfig{Accept: func(from identity.ID) bool { return from == peerID }})
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer cli.Close()
	remove := mux.Handle(udpmux.FirstByte(circuit.TypeData, circuit.TypeData), func(pkt []byte, from netip.AddrPort) bool {
		cli.Handle(pkt, from)
		return true
	})
	defer remove()
	tr := &quic.Transport{Conn: cli.PacketConn()}
	defer tr.Close()
	qc := quicid.Config(4, 10*time.Second)
	msg := []byte("pc2 natlab relay trial " + cmd.ID)
	if cmd.Initiator {
		if _, err := pa.recvFrame(ctx, cmd.ID, "r"); err != nil {
			return fmt.Errorf("relay signalling: %w", err)
		}
		addr, err := cli.Connect(ctx, peerID)
		if err != nil {
			return fmt.Errorf("relay connect: %w", err)
		}
		tlsConf, err := quicid.ClientConfig(pa.key, relayTrialALPN, peerID)
		if err != nil {
			return err
		}
		conn, err := tr.Dial(ctx, addr, tlsConf, qc)
		if err != nil {
			return fmt.Errorf("relayed QUIC: %w", err)
		}
		defer conn.CloseWithError(0, "")
		st, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		if _, err := st.Write(msg); err != nil {
			return err
		}
		_ = st.Close()
		got, err := io.ReadAll(io.LimitReader(st, int64(len(msg))+1))
		if err != nil {
			return fmt.Errorf("relayed echo: %w", err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("relayed echo: got %q", got)
		}
	} else {
		if _, err := cli.Reserve(ctx); err != nil {
			return fmt.Errorf("relay reserve: %w", err)
		}
		tlsConf, err := quicid.ServerConfig(pa.key, relayTrialALPN, func(id identity.ID) error {
			if id != peerID {
				return errors.New("not this trial's peer")
			}
			return nil
		})
		if err != nil {
			return err
		}
		ln, err := tr.Listen(tlsConf, qc)
		if err != nil {
			return err
		}
		defer ln.Close()
		if err := pa.rc.Send(cmd.Peer, cmd.ID, []byte("r")); err != nil {
			return err
		}
		conn, _, err := quicid.Accept(ctx, ln)
		if err != nil {
			return fmt.Errorf("relayed QUIC: %w", err)
		}
		defer conn.CloseWithError(0, "")
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return err
		}
		got, err := io.ReadAll(io.LimitReader(st, int64(len(msg))+1))
		if err != nil {
			return fmt.Errorf("relayed echo: %w", err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("relayed echo: got %q", got)
		}
		if _, err := st.Write(got); err != nil {
			return err
		}
		_ = st.Close()
		// The initiator closes the connection once it has the echo.
		<-conn.Context().Done()
	}
	side.Relay = true
	side.Path = "relay"
	side.RelayMicros = time.Since(t0).Microseconds()
	return nil
}

// relayTrialALPN names the end-to-end protocol of a relay trial.
const relayTrialALPN = "pc2-natlab-relay/1"

// recvFrame returns the rest of the next signalling frame of session id
// that starts with prefix, skipping others.
func (pa *peerAgent) recvFrame(ctx context.Context, id, prefix string) (string, error) {
	for {
		b, err := pa.rc.Recv(ctx, id)
		if err != nil {
			return "", err
		}
		if string(b) == abortFrame {
			return "", errPeerAborted
		}
		if rest, ok := strings.CutPrefix(string(b), prefix); ok {
			return rest, nil
		}
	}
}

// delayWriter adds the emulated latency to the relay's data packets.
type delayWriter struct {
	mux   *udpmux.Mux
	delay time.Duration
}

func (d delayWriter) WriteTo(b []byte, to netip.AddrPort) error {
	if d.delay <= 0 {
		return d.mux.WriteTo(b, to)
	}
	cp := append([]byte(nil), b...)
	time.AfterFunc(d.delay, func() { _ = d.mux.WriteTo(cp, to) })
	return nil
}

// DelayConn delays every datagram written by a fixed one-way latency: the
// lab kernel has no netem, so the agents emulate WAN latency in their own
// send path (punches, probes, acks, relay traffic and signalling frames).
type DelayConn struct {
	*net.UDPConn
	delay time.Duration
}

// NewDelayConn wraps c (delay 0: no wrapping effect).
func NewDelayConn(c *net.UDPConn, delay time.Duration) *DelayConn {
	return &DelayConn{UDPConn: c, delay: delay}
}

// WriteTo sends b after the delay (a copy is kept meanwhile).
func (d *DelayConn) WriteTo(b []byte, to net.Addr) (int, error) {
	if d.delay <= 0 {
		return d.UDPConn.WriteTo(b, to)
	}
	cp := append([]byte(nil), b...)
	time.AfterFunc(d.delay, func() { _, _ = d.UDPConn.WriteTo(cp, to) })
	return len(b), nil
}
