package snapshot

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// pool is the runner's own small connection pool: up to size connections,
// opened on demand with the snapshot session settings, so snapshot reads
// never take connections from anything else.
type pool struct {
	cfg   *pgx.ConnConfig
	slots chan struct{}  // one token per connection that may exist
	idle  chan *pgx.Conn // open connections not in use
}

func newPool(url string, size int, name string) (*pool, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("config key postgres.url: %w", err)
	}
	for k, v := range sessionSettings {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["application_name"] = name
	return &pool{cfg: cfg, slots: make(chan struct{}, size), idle: make(chan *pgx.Conn, size)}, nil
}

// acquire returns a connection; release gives it back.
func (p *pool) acquire(ctx context.Context) (*pgx.Conn, error) {
	select {
	case c := <-p.idle:
		if !c.IsClosed() {
			return c, nil
		}
		<-p.slots
	default:
	}
	select {
	case c := <-p.idle:
		return c, nil
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(cctx, p.cfg)
	if err != nil {
		<-p.slots
		return nil, fmt.Errorf("connect to Postgres for a snapshot: %w (check postgres.url)", err)
	}
	return c, nil
}

// release returns c; a broken connection, or one left inside a
// transaction, is closed.
func (p *pool) release(c *pgx.Conn) {
	if c.IsClosed() || c.PgConn().TxStatus() != 'I' {
		c.Close(context.Background())
		<-p.slots
		return
	}
	p.idle <- c
}

func (p *pool) close() {
	for {
		select {
		case c := <-p.idle:
			c.Close(context.Background())
			<-p.slots
		default:
			return
		}
	}
}
