package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/visibility"
)

// handoff tells snapshot runners how far ingest routes the shape set: after
// the router applied shapes-bucket revision R at a transaction boundary, it
// reads pg_current_snapshot() and writes shapestate.Routing{R, decoded}:
// decoded are the transactions the router routed before R took effect that
// this snapshot does not see (commits in the WAL, not yet visible: a
// synchronous-standby wait), whether in its xip list or at or past its xmax
// (the newest transaction, when none after it has ended yet). A shape snapshot that does not see one of
// them would miss it in both its rows and its log, so the runner retakes it.
type handoff struct {
	kv      jetstream.KeyValue
	pgURL   string
	decoded *decodedXids
	log     *slog.Logger
	notify  chan [2]uint64 // latest (revision, routed transactions); size 1

	last uint64 // revision last handed to notify (router goroutine only)
	conn *pgx.Conn
}

func newHandoff(ctx context.Context, js jetstream.JetStream, cfg Config, decoded *decodedXids, log *slog.Logger) (*handoff, error) {
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := shapestate.Ensure(bctx, js, cfg.Bus.Replicas, false)
	if err != nil {
		return nil, err
	}
	return &handoff{kv: kv, pgURL: cfg.Postgres.URL, decoded: decoded, log: log, notify: make(chan [2]uint64, 1)}, nil
}

// applied is called by the router's goroutine after every step; it passes
// on a newer revision without blocking (a newer one replaces a waiting one).
func (h *handoff) applied(revision, routed uint64) {
	if h == nil || revision <= h.last {
		return
	}
	h.last = revision
	v := [2]uint64{revision, routed}
	for {
		select {
		case h.notify <- v:
			return
		default:
		}
		select {
		case old := <-h.notify:
			v[1] = max(v[1], old[1]) // the later boundary: a superset of what was routed before either
		default:
		}
	}
}

func (h *handoff) run(ctx context.Context) error {
	defer func() {
		if h.conn != nil {
			h.conn.Close(context.Background())
		}
	}()
	for {
		var v [2]uint64
		select {
		case <-ctx.Done():
			return nil
		case v = <-h.notify:
		}
		// Retry until written or a newer revision arrives; each attempt is
		// bounded, and runners waiting on it give up on their own deadline.
		for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
			err := h.write(ctx, v[0], v[1])
			if err == nil || ctx.Err() != nil {
				break
			}
			h.log.Warn("snapshot hand-off not written; new shapes wait for it", "revision", v[0], "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			select {
			case nv := <-h.notify:
				v = [2]uint64{nv[0], max(v[1], nv[1])}
			default:
			}
		}
	}
}

func (h *handoff) write(ctx context.Context, revision, routed uint64) error {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if h.conn == nil || h.conn.IsClosed() {
		conn, err := pgx.Connect(actx, h.pgURL)
		if err != nil {
			return fmt.Errorf("connect to Postgres: %w", err)
		}
		h.conn = conn
	}
	var text string
	if err := h.conn.QueryRow(actx, "SELECT pg_current_snapshot()::text").Scan(&text); err != nil {
		h.conn.Close(context.Background())
		h.conn = nil
		return fmt.Errorf("read pg_current_snapshot(): %w", err)
	}
	snap, err := visibility.Parse(text)
	if err != nil {
		return err
	}
	r := shapestate.Routing{Revision: revision, At: time.Now().UTC()}
	r.Decoded = h.decoded.invisible(snap, routed)
	if len(r.Decoded) > 0 {
		h.log.Info("transactions routed before new shapes are still invisible; their snapshots wait for them", "xids", r.Decoded, "revision", revision)
	}
	return shapestate.PutRouting(actx, h.kv, r)
}
