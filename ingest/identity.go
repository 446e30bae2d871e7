package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/fanout"
)

// identitySetter sets REPLICA IDENTITY FULL on the tables of new shapes,
// once per table, in the background: ALTER TABLE waits for an ACCESS
// EXCLUSIVE lock, and every query on the table queues behind it while it
// waits, so it must neither run on the path of the shape (its router,
// its snapshot, the HTTP request that made it) nor wait long. Each attempt
// waits at most postgres.replica_identity_lock_timeout for the lock; a
// table whose lock stays taken is tried again with a doubling pause, at
// most postgres.replica_identity_attempts times, then left to the operator
// with the command to run. Until it is set, the table's deletes and moves
// out of shapes carry only the key.
type identitySetter struct {
	pgURL       string
	lockTimeout time.Duration
	attempts    int
	maxPause    time.Duration
	log         *slog.Logger
	failed      prometheus.Counter

	queue chan string
	want  map[string]bool // queued or done: each table once (owned by enqueue's caller)
}

func newIdentitySetter(pgURL string, lockTimeout time.Duration, attempts int, maxPause time.Duration, reg prometheus.Registerer, log *slog.Logger) *identitySetter {
	failed := prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_replica_identity_failures_total",
		Help: "Tables whose REPLICA IDENTITY FULL ingest gave up setting (the log names the command to run)."})
	reg.MustRegister(failed)
	return &identitySetter{pgURL: pgURL, lockTimeout: lockTimeout, attempts: attempts, maxPause: maxPause, log: log,
		failed: failed, queue: make(chan string, 4096), want: map[string]bool{}}
}

// enqueue asks for table once; it never blocks (a full queue drops the
// table, which the next shape on it asks for again).
func (s *identitySetter) enqueue(table string) {
	if s == nil || s.want[table] {
		return
	}
	select {
	case s.queue <- table:
		s.want[table] = true
	default:
	}
}

// run sets the queued tables' identity until ctx ends.
func (s *identitySetter) run(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		var table string
		select {
		case <-ctx.Done():
			return nil
		case table = <-s.queue:
		}
		pause := time.Second
		for attempt := 1; ; attempt++ {
			var err error
			if conn == nil || conn.IsClosed() {
				conn, err = s.connect(ctx)
			}
			if err == nil {
				err = s.set(ctx, conn, table)
			}
			if err == nil || ctx.Err() != nil {
				break
			}
			if !lockNotAvailable(err) || attempt >= s.attempts {
				s.failed.Inc()
				s.log.Error("REPLICA IDENTITY FULL not set: deletes and moves out of this table's shapes carry only the key; run the command yourself "+
					"(it waits for a lock on the table: run it when the table is quiet)", "table", table, "attempts", attempt,
					"command", "ALTER TABLE "+quoteTable(table)+" REPLICA IDENTITY FULL", "err", err)
				break
			}
			s.log.Info("REPLICA IDENTITY FULL waits for a lock on the table; trying again later", "table", table, "attempt", attempt,
				"of", s.attempts, "retry_in", pause, "lock_timeout", s.lockTimeout)
			if !sleepCtx(ctx, pause) {
				return nil
			}
			pause = min(2*pause, s.maxPause)
		}
	}
}

func (s *identitySetter) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, s.pgURL)
	if err != nil {
		return nil, fmt.Errorf("connect to Postgres to set REPLICA IDENTITY FULL: %w", err)
	}
	// The lock wait is bounded: queries on the table queue behind a
	// waiting ALTER TABLE for as long as it waits.
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = %d", max(s.lockTimeout.Milliseconds(), 1))); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("SET lock_timeout: %w", err)
	}
	return conn, nil
}

func (s *identitySetter) set(ctx context.Context, conn *pgx.Conn, table string) error {
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return SetReplicaIdentityFull(actx, conn, table)
}

// lockNotAvailable: the ALTER gave up waiting (lock_timeout, SQLSTATE 55P03).
func lockNotAvailable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

func quoteTable(table string) string {
	schema, name := fanout.SplitTable(table)
	return pgx.Identifier{schema, name}.Sanitize()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
