package tunnel

import "github.com/elacity/pc2/core/identity"

// IDs returns the node ids holding a tunnel here, in no order; the
// supernode mesh tells the other supernodes, so they forward these nodes'
// visitors here.
func (s *Server) IDs() []identity.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]identity.ID, 0, len(s.tunnels))
	for id := range s.tunnels {
		ids = append(ids, id)
	}
	return ids
}

// IDs: see Server.IDs; nil before Start.
func (s *ServerService) IDs() []identity.ID {
	if srv := s.srv.Load(); srv != nil {
		return srv.IDs()
	}
	return nil
}
