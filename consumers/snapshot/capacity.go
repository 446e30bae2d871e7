package snapshot

import (
	"context"
	"fmt"
	"time"
)

// connectionShare is the part of Postgres's free connections one replica's
// snapshots may hold: the application, ingest, the HTTP API and the other
// replicas need the rest.
const connectionShare = 4

// concurrencyFor is how many snapshot groups a replica runs at once: the
// configured number, unless Postgres has too few connections free for it
// (max_connections less the reserved ones and those in use), when a
// replica takes a connectionShare-th of what is free, at least one. A burst
// of new shapes never needs more: its shapes wait in groups, not for
// connections of their own.
func concurrencyFor(configured, maxConnections, reserved, inUse int) int {
	free := maxConnections - reserved - inUse
	return max(1, min(configured, free/connectionShare))
}

// sizeConcurrency sizes r.cfg.Concurrency from the database's connections
// (concurrencyFor), once, at start. When they cannot be read it keeps the
// configured number and says so.
func (r *Runner) sizeConcurrency(ctx context.Context) {
	defer func() { r.m.concurrency.Set(float64(r.cfg.Concurrency)) }()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var maxConn, reserved, inUse int
	err := func() error {
		conn, err := r.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer r.pool.Release(conn)
		return conn.QueryRow(ctx, `SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int,
			(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int`).Scan(&maxConn, &reserved, &inUse)
	}()
	if err != nil {
		r.log.Warn("could not read Postgres's connection limits; taking snapshot.concurrency snapshots at once as configured", "concurrency", r.cfg.Concurrency, "err", err)
		return
	}
	n := concurrencyFor(r.cfg.Concurrency, maxConn, reserved, inUse)
	if n < r.cfg.Concurrency {
		r.log.Warn(fmt.Sprintf("Postgres has %d connections free (max_connections %d, %d reserved, %d in use): this replica takes %d snapshot groups at once, not snapshot.concurrency %d (raise max_connections to allow more)",
			maxConn-reserved-inUse, maxConn, reserved, inUse, n, r.cfg.Concurrency))
		r.cfg.Concurrency = n
	}
}
