package redistest

import "testing"

// SetUser creates or updates an ACL user that may run every command on every
// key and channel, with password as its only password: "resetpass" drops the
// previous ones, so rotating a password makes the old one fail on new AUTHs.
// Connections already authenticated stay so; see KillClients.
func (s *Server) SetUser(t testing.TB, user, password string) {
	t.Helper()
	if err := s.Do(t, "ACL", "SETUSER", user, "on", "resetpass", ">"+password, "~*", "&*", "+@all").Error(); err != nil {
		t.Fatalf("redistest: ACL SETUSER %s on %s: %v", user, s.Addr, err)
	}
}

// KillClients closes every connection authenticated as user (CLIENT KILL
// USER) and returns how many were closed. The user must exist.
func (s *Server) KillClients(t testing.TB, user string) int64 {
	t.Helper()
	n, err := s.Do(t, "CLIENT", "KILL", "USER", user).AsInt64()
	if err != nil {
		t.Fatalf("redistest: CLIENT KILL USER %s on %s: %v", user, s.Addr, err)
	}
	return n
}
