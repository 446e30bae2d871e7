package ingest

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// heartbeat writes a tiny WAL message when no change arrived for idle, so
// the walsender moves on and its keepalive lets an idle slot advance.
func heartbeat(ctx context.Context, conn *pgx.Conn, idle time.Duration, lastData *atomic.Int64, log *slog.Logger) error {
	tick := time.NewTicker(idle / 2)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		seen := time.Unix(0, lastData.Load())
		if time.Since(seen) < idle || time.Since(last) < idle {
			continue
		}
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := conn.Exec(hctx, "SELECT pg_logical_emit_message(false, 'fanout_heartbeat', '')")
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("idle heartbeat failed; an idle slot does not advance until it works "+
				"(the user needs EXECUTE on pg_logical_emit_message(boolean, text, text); or set postgres.idle_heartbeat=0s)", "err", err)
		}
		last = time.Now()
	}
}
