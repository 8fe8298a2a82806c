package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/elacity/pc2/core/host"
)

// ServiceName is the service's name: its config section, storage
// namespace and metrics prefix.
const ServiceName = "dht"

// Service runs a Node as a host service.
type Service struct {
	// Override, if set, edits the configuration after the file is read
	// (command-line flags).
	Override func(*Config)
	// Defaults, if set, edits the defaults before the file is read (a
	// role's own defaults).
	Defaults func(*Config)

	node *Node
}

// NewService returns the DHT service.
func NewService() *Service { return &Service{} }

func (s *Service) Name() string { return ServiceName }

// Node returns the running node (nil before Start): the API other
// services use to publish and look up records.
func (s *Service) Node() *Node { return s.node }

// Start reads the "dht" section, opens the sockets and starts joining.
func (s *Service) Start(ctx context.Context, h host.Handle) error {
	cfg := DefaultConfig(h.Config().Dev)
	if s.Defaults != nil {
		s.Defaults(&cfg)
	}
	sec := h.Section()
	if err := sec.Decode(&cfg); err != nil {
		return err
	}
	if s.Override != nil {
		s.Override(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		var errs []error
		for _, e := range unjoin(err) {
			var fe *FieldError
			if errors.As(e, &fe) {
				errs = append(errs, sec.Errorf(fe.Field, fe.Msg))
			} else {
				errs = append(errs, e)
			}
		}
		return errors.Join(errs...)
	}
	n, err := New(cfg, Options{
		Identity: h.Identity(),
		Storage:  h.Storage(),
		Logger:   h.Logger(),
		Metrics:  h.Metrics(),
		Clock:    h.Clock(),
		Client:   cfg.Client,
	})
	if err != nil {
		return err
	}
	if err := n.Start(ctx); err != nil {
		return err
	}
	s.node = n
	if adv, ok := h.(host.Advertiser); ok {
		for _, a := range n.Addrs() {
			key := "udp4"
			if a.Addr().Is6() {
				key = "udp6"
			}
			adv.Advertise(key, a.String())
		}
	}
	if len(n.boot) == 0 {
		h.Logger().Info("no bootstrap nodes: waiting for others to join through this node (set dht.bootstrap, or dht.publicNetwork to join the public Boson network)")
	}
	return nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Stop closes the node; queued writes finish and the routing table is
// saved.
func (s *Service) Stop(ctx context.Context) error {
	if s.node == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		s.node.Close()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dht: stop: %w", ctx.Err())
	}
}
