package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres ends a replication connection that sends no status for
// wal_sender_timeout. Its keepalives ask for a reply at half of it, but
// the receiver reads them only as fast as routing takes what it read
// before: behind a slow transaction, the reply that keeps the connection
// is the status sender's own, every interval. So the interval is held to
// a third of wal_sender_timeout, whatever postgres.status_interval says.

// statusEvery is how often to send status: the configured interval, or a
// third of wal_sender_timeout when that is shorter (0: no timeout).
// clamped says the configured value was too long.
func statusEvery(configured, walSenderTimeout time.Duration) (every time.Duration, clamped bool) {
	if walSenderTimeout <= 0 || configured <= walSenderTimeout/3 {
		return configured, false
	}
	return max(walSenderTimeout/3, 10*time.Millisecond), true
}

// walSenderTimeout reads the server's wal_sender_timeout.
func walSenderTimeout(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
	var ms int64
	err := conn.QueryRow(ctx, "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_sender_timeout'").Scan(&ms)
	if err != nil {
		return 0, fmt.Errorf("read wal_sender_timeout: %w", err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// statusInterval is the session's status interval (statusEvery), logged
// when it differs from postgres.status_interval.
func (s *Service) statusInterval(ctx context.Context, conn *pgx.Conn) time.Duration {
	configured := s.cfg.Postgres.StatusInterval
	timeout, err := walSenderTimeout(ctx, conn)
	if err != nil {
		s.log.Warn("cannot read wal_sender_timeout; sending status every postgres.status_interval", "status_interval", configured, "err", err)
		return configured
	}
	every, clamped := statusEvery(configured, timeout)
	if clamped {
		s.log.Warn("postgres.status_interval is not well under the server's wal_sender_timeout: status is sent every third of it instead "+
			"(lower postgres.status_interval to silence this)", "status_interval", configured, "wal_sender_timeout", timeout, "sending_every", every)
	}
	return every
}
