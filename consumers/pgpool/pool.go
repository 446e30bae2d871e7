// Package pgpool is a small bounded pool of plain pgx connections, each
// opened on demand with fixed session settings. A service keeps one per
// kind of long read (snapshots, subset snapshots), so those reads never
// take the connections anything else needs.
package pgpool

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SearchPath is every pool connection's search_path: pg_catalog first and
// pg_temp last, so no other schema is searched (pg_temp is never searched
// for functions and operators).
const SearchPath = "pg_catalog, pg_temp"

// Config says how many connections a pool may hold and how they are opened.
type Config struct {
	URL      string            // config key postgres.url
	Size     int               // connections that may exist at once
	Settings map[string]string // session settings of every connection
	Name     string            // application_name, as pg_stat_activity shows it
	// Purpose names the reads in errors: "connect to Postgres for <Purpose>".
	Purpose string
	// Wait bounds how long Acquire waits for a connection to be free; zero
	// waits as long as the caller's context.
	Wait time.Duration
	// ConnectTimeout bounds opening one connection.
	ConnectTimeout time.Duration
	// Reconnect is how long Begin keeps retrying, with backoff, when
	// Postgres cannot be reached or a connection breaks (a restart);
	// zero: no retry.
	Reconnect time.Duration
	// ReconnectKey names the config key of Reconnect in errors.
	ReconnectKey string
}

// checkIdleAfter: a connection idle longer than this is checked with a
// round trip before it is handed out; the server may have closed it
// meanwhile (a restart, idle_session_timeout), and a read on it would fail.
const checkIdleAfter = time.Second

// Pool holds up to Config.Size connections. Its methods are safe for
// concurrent use.
type Pool struct {
	cfg   Config
	conn  *pgx.ConnConfig
	slots chan struct{} // one token per connection that may exist
	idle  chan idleConn // open connections not in use
}

type idleConn struct {
	c     *pgx.Conn
	since time.Time
}

// New checks the URL; it opens no connection.
func New(cfg Config) (*Pool, error) {
	if cfg.Size < 1 {
		return nil, fmt.Errorf("connection pool for %s: size %d, want at least 1", cfg.Purpose, cfg.Size)
	}
	cc, err := pgx.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("config key postgres.url: %w", err)
	}
	for k, v := range cfg.Settings {
		cc.RuntimeParams[k] = v
	}
	cc.RuntimeParams["application_name"] = cfg.Name
	// A fixed search_path: the reads name their table with its schema, and
	// an operator or function of a where clause must resolve to
	// pg_catalog's, never to one another role planted in a schema of the
	// path (its exact types would win over a built-in needing a cast).
	cc.RuntimeParams["search_path"] = SearchPath
	return &Pool{cfg: cfg, conn: cc, slots: make(chan struct{}, cfg.Size), idle: make(chan idleConn, cfg.Size)}, nil
}

// Acquire returns an idle connection that still works, or opens one when
// fewer than Size exist, or waits for one to be released. Give it back
// with Release.
func (p *Pool) Acquire(ctx context.Context) (*pgx.Conn, error) {
	if c := p.takeIdle(ctx); c != nil {
		return c, nil
	}
	wctx := ctx
	if p.cfg.Wait > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, p.cfg.Wait)
		defer cancel()
	}
	for opened := false; !opened; {
		select {
		case ic := <-p.idle:
			if p.usable(ctx, ic) {
				return ic.c, nil
			} // else its slot is free now: wait again
		case p.slots <- struct{}{}:
			opened = true
		case <-wctx.Done():
			if p.cfg.Wait > 0 {
				return nil, fmt.Errorf("all %d connections for %s stayed busy for %s: retry later", p.cfg.Size, p.cfg.Purpose, p.cfg.Wait)
			}
			return nil, ctx.Err()
		}
	}
	cctx := ctx
	if p.cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, p.cfg.ConnectTimeout)
		defer cancel()
	}
	c, err := pgx.ConnectConfig(cctx, p.conn)
	if err != nil {
		<-p.slots
		return nil, fmt.Errorf("connect to Postgres for %s: %w (check postgres.url)", p.cfg.Purpose, err)
	}
	return c, nil
}

// Release gives c back; a broken connection, or one left inside a
// transaction, is closed instead, so the next caller gets a clean session.
func (p *Pool) Release(c *pgx.Conn) {
	if c.IsClosed() || c.PgConn().TxStatus() != 'I' {
		c.Close(context.Background())
		<-p.slots
		return
	}
	p.idle <- idleConn{c, time.Now()}
}

// takeIdle returns a usable idle connection, or nil when none is idle.
func (p *Pool) takeIdle(ctx context.Context) *pgx.Conn {
	for {
		select {
		case ic := <-p.idle:
			if p.usable(ctx, ic) {
				return ic.c
			}
		default:
			return nil
		}
	}
}

// usable reports whether an idle connection may be handed out: open, and
// answering a round trip when it was idle for a while. One that is not is
// closed and its slot given back.
func (p *Pool) usable(ctx context.Context, ic idleConn) bool {
	if !ic.c.IsClosed() && time.Since(ic.since) < checkIdleAfter {
		return true
	}
	if !ic.c.IsClosed() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := ic.c.Ping(pctx)
		cancel()
		if err == nil {
			return true
		}
	}
	ic.c.Close(context.Background())
	<-p.slots
	return false
}

// Begin acquires a connection and begins a transaction on it. When
// Postgres cannot be reached or the connection breaks (IsConnectionError),
// it tries again with backoff for up to Config.Reconnect. Release the
// connection when done (after the transaction ends).
func (p *Pool) Begin(ctx context.Context, opts pgx.TxOptions) (*pgx.Conn, pgx.Tx, error) {
	deadline := time.Now().Add(p.cfg.Reconnect)
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		c, err := p.Acquire(ctx)
		if err == nil {
			var tx pgx.Tx
			if tx, err = c.BeginTx(ctx, opts); err == nil {
				return c, tx, nil
			}
			p.Release(c)
			err = fmt.Errorf("begin a transaction for %s: %w", p.cfg.Purpose, err)
		}
		if !IsConnectionError(err) || ctx.Err() != nil {
			return nil, nil, err
		}
		if time.Now().Add(backoff).After(deadline) {
			if p.cfg.Reconnect > 0 {
				err = fmt.Errorf("%w (retried for %s, %s)", err, p.cfg.Reconnect, p.cfg.ReconnectKey)
			}
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// Close closes the idle connections. Connections still acquired are
// closed by their Release only if broken; call Close after the users stop.
func (p *Pool) Close() {
	for {
		select {
		case ic := <-p.idle:
			ic.c.Close(context.Background())
			<-p.slots
		default:
			return
		}
	}
}
