package shapeapi

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Connections are bounded in number (api.max_connections) and in time:
// http.Server's ReadTimeout (api.read_timeout) bounds reading a request,
// its IdleTimeout (api.idle_timeout) a keep-alive connection between
// requests, and withDeadlines each write of a response (api.write_timeout),
// so a client that stops reading holds its connection, and what the
// response holds (a subset's Postgres connection), no longer than that.

// descriptorReserve is kept for everything but client connections: log
// files, NATS, Postgres.
const descriptorReserve = 256

// maxConnections is api.max_connections, or, when 0, the descriptor limit
// less descriptorReserve (at least 64).
func maxConnections(configured int) int {
	if configured > 0 {
		return configured
	}
	limit, ok := descriptorLimit()
	if !ok || limit > 1<<20 {
		return 1 << 20
	}
	return max(int(limit)-descriptorReserve, 64)
}

// limitListener accepts at most n connections at once; more wait in the
// kernel's listen backlog until one closes.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
}

// open is how many accepted connections are open.
func (l *limitListener) open() int { return len(l.slots) }

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// withDeadlines gives every write of every response a deadline of timeout
// from the moment it is made: set before the handler runs, before each
// write and flush, and once more when it returns (for the server's final
// flush). A long poll or SSE stream may last longer than timeout; each of
// its writes may not.
func withDeadlines(h http.Handler, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: timeout}
		d.arm()
		defer d.arm()
		h.ServeHTTP(d, r)
	})
}

type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (d *deadlineWriter) arm() { d.rc.SetWriteDeadline(time.Now().Add(d.timeout)) }

func (d *deadlineWriter) WriteHeader(code int) {
	d.arm()
	d.ResponseWriter.WriteHeader(code)
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.arm()
	return d.ResponseWriter.Write(p)
}

func (d *deadlineWriter) Flush() {
	d.arm()
	d.rc.Flush()
}

func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }
