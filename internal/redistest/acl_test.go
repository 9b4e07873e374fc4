package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/bridge-dev/bridge/internal/redistest"
)

func TestSetUserAndKillClients(t *testing.T) {
	s := redistest.Start(t, redistest.Options{})
	s.SetUser(t, "app", "first")
	connect := func(pw string) (rueidis.Client, error) {
		return rueidis.NewClient(rueidis.ClientOption{
			InitAddress:       []string{s.Addr},
			Username:          "app",
			Password:          pw,
			DisableCache:      true,
			ForceSingleClient: true,
		})
	}
	c, err := connect("first")
	if err != nil {
		t.Fatalf("connect as app: %v", err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Do(ctx, c.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatalf("SET as app: %v", err)
	}
	who, err := c.Do(ctx, c.B().AclWhoami().Build()).ToString()
	if err != nil || who != "app" {
		t.Fatalf("ACL WHOAMI = %q, %v", who, err)
	}

	// Rotate: the old password stops working for new connections.
	s.SetUser(t, "app", "second")
	if c2, err := connect("first"); err == nil {
		c2.Close()
		t.Fatal("old password still accepted after SetUser")
	}
	c3, err := connect("second")
	if err != nil {
		t.Fatalf("new password refused: %v", err)
	}
	c3.Close()

	// The existing connection lives on until killed.
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("PING on the old connection: %v", err)
	}
	if n := s.KillClients(t, "app"); n < 1 {
		t.Fatalf("KillClients killed %d connections, want at least 1", n)
	}
	// rueidis reconnects with the old password, which no longer works.
	redistest.Eventually(t, 5*time.Second, func() bool {
		err := c.Do(ctx, c.B().Ping().Build()).Error()
		return err != nil
	}, "old client still works after KillClients and a password change")
	s.SetUser(t, "idle", "pw")
	if n := s.KillClients(t, "idle"); n != 0 {
		t.Fatalf("KillClients of a user without connections = %d", n)
	}
}
