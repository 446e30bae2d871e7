package ingest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/visibility"
)

// A replication session starts at the slot's confirmed position R, behind
// where the router's subquery results stand (a restarted process has none
// at all). Routing from R needs the results as they stood at R, so before
// the session streams, they are built again:
//
//  1. every result is loaded in one snapshot S (one read: all of them at
//     one point B of the commit order, with the WAL position L read after S);
//  2. the transactions from R that S saw are decoded once, without routing,
//     from the slot itself (pg_logical_slot_peek_binary_changes up to L;
//     the slot is not in use yet, and peeking does not move it), and for
//     each row of a subquery's table they changed, its row before the first
//     such change is kept (the whole old row: subquery tables have REPLICA
//     IDENTITY FULL);
//  3. the results are rewound with those rows to R (match.Registry.LoadedAt).
//
// A row whose old values the stream does not carry (REPLICA IDENTITY not
// FULL), or a TRUNCATE of a subquery's table in that span, cannot be
// rewound: the shapes reading that table are rotated (clients refetch).

// peekAttempts bounds the retries of a peek refused because the slot is
// still in use (the previous session's walsender has not exited yet).
const peekAttempts = 60

// rebuildResults rebuilds the router's subquery results at from, where the
// session about to start streams from.
func (s *Service) rebuildResults(ctx context.Context, from pglogrepl.LSN) error {
	reg := s.router.reg
	if !reg.HasSubqueries() {
		return nil
	}
	start := time.Now()
	req := reg.ReloadAll()
	s.router.sq.reset()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	res := s.subq.read(ctx, &conn, subqJob{load: &req})
	if res.err != nil {
		return fmt.Errorf("load the subquery results again for the new replication session: %w", res.err)
	}
	c := &rewindCollector{snap: res.snap, keys: reg.SubqueryTableKeys(), seen: map[string]bool{}, broken: map[string]string{}}
	if err := s.peek(ctx, conn, res.walLSN, c); err != nil {
		return err
	}
	reg.LoadedAt(res.load, c.rows)
	rotated := map[string]bool{}
	rotate := func(table, why string) {
		for _, h := range reg.DependentsOf(table) {
			if !rotated[h] {
				rotated[h] = true
				s.metrics.Rotations.Inc()
				s.router.sq.rotate(match.Rotation{Handle: h, Reason: why})
			}
		}
	}
	for table, why := range c.broken {
		rotate(table, why)
	}
	// The results are exact at the slot's position, but the session sends
	// again what was published after it, and the move-ins of those
	// transactions are read again, at another point of the history, and
	// placed elsewhere: the bus would carry a second, different history
	// for these shapes, and their logs would keep parts of both
	// (TestSubqueryShapesSurviveKills). So when the session may send again
	// (a new process, which cannot know what the last one published, or a
	// new session behind what this one published), every shape with
	// subqueries that existed before it is replaced (clients get 409 and
	// refetch); shapes added from now on are routed from their snapshot.
	if s.resends {
		for table := range reg.SubqueryTableKeys() {
			rotate(table, "a new replication session re-sends what was published after the slot's position, and its move-ins would be read again at another point")
		}
	}
	s.router.sq.afterChange(nil) // rotations, and loads of shapes added meanwhile
	s.handoff.applied(s.router.Applied())
	s.log.Info("subquery results rebuilt at the slot's position", "from", from, "results", len(req.Subqueries),
		"rows_rewound", len(c.rows), "read_at", res.walLSN, "shapes_replaced", len(rotated), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// peek decodes the slot's transactions that commit below upto into c.
func (s *Service) peek(ctx context.Context, conn *pgx.Conn, upto pglogrepl.LSN, c *rewindCollector) error {
	dec := NewDecoder(s.log)
	for attempt := 1; ; attempt++ {
		rows, err := conn.Query(ctx, "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, 'proto_version', '1', 'publication_names', $3)",
			s.cfg.Postgres.Slot, upto.String(), s.cfg.Postgres.Publication)
		if err == nil {
			for rows.Next() {
				var data []byte
				if err = rows.Scan(&data); err != nil {
					break
				}
				if err = dec.Decode(ctx, data, c); err != nil {
					break
				}
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err == nil {
			return nil
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55006" && attempt < peekAttempts { // object in use: the old walsender
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			c.reset()
			dec = NewDecoder(s.log)
			continue
		}
		return fmt.Errorf("decode the slot's transactions since its confirmed position to rebuild the subquery results: %w", err)
	}
}

// rewindCollector is the Handler of the peek: for each row of a subquery's
// table that a transaction the snapshot saw changed, its state before the
// first such change.
type rewindCollector struct {
	snap    visibility.Snapshot
	keys    map[string][]string // subquery tables -> their primary key
	seen    map[string]bool
	rows    []match.RewindRow
	visible bool
	broken  map[string]string // tables whose rows cannot be rewound, and why
}

func (c *rewindCollector) reset() {
	c.seen, c.rows, c.broken = map[string]bool{}, nil, map[string]string{}
}

func (c *rewindCollector) Begin(_ context.Context, b Begin) error {
	c.visible = c.snap.Visible(b.Xid)
	return nil
}

func (c *rewindCollector) Commit(context.Context, Commit) error { return nil }

func (c *rewindCollector) Truncate(_ context.Context, tables []string) error {
	if !c.visible {
		return nil
	}
	for _, t := range tables {
		if c.keys[t] != nil {
			c.broken[t] = "table " + t + ", which its subqueries read, was truncated while ingest was away"
		}
	}
	return nil
}

func (c *rewindCollector) Change(_ context.Context, ch match.RowChange) error {
	pk := c.keys[ch.Table]
	if !c.visible || pk == nil {
		return nil
	}
	key := func(r fanout.Row) (fanout.Row, string, bool) {
		k := fanout.Row{}
		var b strings.Builder
		for _, col := range pk {
			v, ok := r[col]
			if !ok || v == nil {
				return nil, "", false
			}
			k[col] = v
			b.WriteString(*v)
			b.WriteByte(0)
		}
		return k, b.String(), true
	}
	first := func(k fanout.Row, ks string, old fanout.Row) {
		if c.seen[ks] {
			return
		}
		c.seen[ks] = true
		c.rows = append(c.rows, match.RewindRow{Table: ch.Table, Key: k, Old: old})
	}
	unknown := func() {
		c.broken[ch.Table] = "ingest restarted and cannot rebuild the results of subqueries on " + ch.Table + ": its changes do not carry the old rows (set REPLICA IDENTITY FULL on it; ingest does when postgres.replica_identity_full is true)"
	}
	switch ch.Op {
	case fanout.OpInsert:
		if k, ks, ok := key(ch.New); ok {
			first(k, ks+ch.Table, nil)
		}
	case fanout.OpUpdate, fanout.OpDelete:
		if ch.Old == nil || !ch.OldFull {
			unknown()
			return nil
		}
		k, ks, ok := key(ch.Old)
		if !ok {
			unknown()
			return nil
		}
		first(k, ks+ch.Table, ch.Old)
		if ch.New != nil {
			if nk, nks, ok := key(ch.New); ok && nks != ks {
				first(nk, nks+ch.Table, nil)
			}
		}
	}
	return nil
}
