package httpapi

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Why firstByteListener: a server that times a new connection's first request from
// accept closes a connection that a client's pool dials and keeps unused for a few
// seconds. Go's transport does exactly that when a request it dialed for is served by
// another connection that freed up first. A POST sent on that connection as it closes
// fails with a bare EOF, and no client retries it: the connection was never used, and a
// POST is not idempotent. So until its first byte, a new connection counts as idle, like
// a kept-alive one between requests, and IdleTimeout bounds it; the header and request
// timeouts start with the request.

// firstByteListener accepts from the wrapped listener and returns a connection from
// Accept only once its first byte has arrived (or a connection error or the inner
// listener's error, for the server's own retry logic).
type firstByteListener struct {
	net.Listener
	idle     time.Duration
	accepted chan acceptResult
	done     chan struct{}
	close    sync.Once

	mu      sync.Mutex
	waiting map[net.Conn]struct{} // connections still waiting for their first byte
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newFirstByteListener(ln net.Listener, idle time.Duration) *firstByteListener {
	if idle <= 0 {
		idle = 2 * time.Minute
	}
	l := &firstByteListener{Listener: ln, idle: idle, accepted: make(chan acceptResult),
		done: make(chan struct{}), waiting: map[net.Conn]struct{}{}}
	go l.acceptLoop()
	return l
}

func (l *firstByteListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// The channel is unbuffered, so a temporary error (out of file descriptors)
			// is retried at the pace of the server's own backoff, not in a spin.
			select {
			case l.accepted <- acceptResult{err: err}:
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !l.track(c) {
			c.Close()
			return
		}
		go l.awaitFirstByte(c)
	}
}

// track records c as waiting; false once the listener is closed.
func (l *firstByteListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiting == nil {
		return false
	}
	l.waiting[c] = struct{}{}
	return true
}

// untrack removes c from the waiting set; false when Close has closed it already.
func (l *firstByteListener) untrack(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.waiting[c]; !ok {
		return false
	}
	delete(l.waiting, c)
	return true
}

func (l *firstByteListener) awaitFirstByte(c net.Conn) {
	pc := &primedConn{Conn: c}
	err := c.SetReadDeadline(time.Now().Add(l.idle))
	if err == nil {
		_, err = c.Read(pc.first[:])
	}
	if err == nil {
		err = c.SetReadDeadline(time.Time{})
	}
	if !l.untrack(c) {
		return // closed with the listener
	}
	if err != nil {
		c.Close() // gone, or idle past IdleTimeout before its first request
		return
	}
	pc.primed = true
	select {
	case l.accepted <- acceptResult{c: pc}:
	case <-l.done:
		c.Close()
	}
}

func (l *firstByteListener) Accept() (net.Conn, error) {
	select {
	case r := <-l.accepted:
		return r.c, r.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes the inner listener and every connection still waiting for its first byte
// (the server's Shutdown knows only the connections it was handed).
func (l *firstByteListener) Close() error {
	err := net.ErrClosed
	l.close.Do(func() {
		close(l.done)
		err = l.Listener.Close()
		l.mu.Lock()
		waiting := l.waiting
		l.waiting = nil
		l.mu.Unlock()
		for c := range waiting {
			c.Close()
		}
	})
	return err
}

// primedConn is a connection whose first byte was read already: the first Read returns
// it. Every connection the server serves is one.
type primedConn struct {
	net.Conn
	first  [1]byte
	primed bool
	closed sync.Once
}

func (c *primedConn) Read(p []byte) (int, error) {
	if c.primed && len(p) > 0 {
		c.primed = false
		p[0] = c.first[0]
		return 1, nil
	}
	return c.Conn.Read(p)
}

// lingerTimeout is how long a closed connection keeps reading what its client still
// sends, as net/http's rstAvoidanceDelay.
const lingerTimeout = 500 * time.Millisecond

// Close half-closes the connection and reads what the client still sends, for up to
// lingerTimeout, before closing it. Closing a socket with unread input sends an RST,
// which can reach the client before it has read the answer it was sent: a client still
// sending a body the bridge refused unread (413, 401) got "connection reset" instead of
// the problem. The waiting happens on a goroutine of its own: Close returns at once.
func (c *primedConn) Close() error {
	err := net.ErrClosed
	c.closed.Do(func() {
		tcp, ok := c.Conn.(interface{ CloseWrite() error })
		if !ok || tcp.CloseWrite() != nil || c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout)) != nil {
			err = c.Conn.Close()
			return
		}
		err = nil
		go c.linger()
	})
	return err
}

// linger discards input until the client closes or lingerTimeout passes, then closes.
func (c *primedConn) linger() {
	var buf [4096]byte
	for {
		if _, err := c.Conn.Read(buf[:]); err != nil {
			break
		}
	}
	c.Conn.Close()
}

// CloseWrite lets the server half-close a TCP connection after an error answer, as it
// does with an unwrapped one; on a connection that cannot, it does nothing, as the server
// would.
func (c *primedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
