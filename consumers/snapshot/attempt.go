package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/consumers/wheresql"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/visibility"
)

// attempt reads one snapshot of each job, all of one table and schema, in
// one REPEATABLE READ READ ONLY transaction: one pg_current_snapshot() for
// all, one query for all. It returns blocked xids instead when the
// snapshot does not see a transaction whose commit is already in the WAL
// (routed by ingest before the shapes, or committed in pg_xact yet still in
// progress, e.g. waiting for a synchronous standby): the rows would miss
// it, and so would the shapes' logs. What fails for one job alone is left
// in its err; err is a failure of the whole attempt. On success each job's
// snap is its completed snapshot.
func (g *group) attempt(ctx context.Context, jobs []*job, routing shapestate.Routing) (blocked []uint64, err error) {
	for _, j := range jobs {
		j.snap, j.err = nil, nil
	}
	conn, tx, err := g.r.pool.Begin(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	defer g.r.pool.Release(conn)
	defer tx.Rollback(context.WithoutCancel(ctx))

	shape := jobs[0].shape
	t := time.Now()
	snap, committed, live, err := g.begin(ctx, conn.PgConn(), shape)
	g.prelude = time.Since(t)
	if err != nil {
		return nil, err
	}
	for _, x := range routing.Decoded {
		if !snap.Visible64(x) { // in xip, or at or past xmax
			blocked = append(blocked, x)
		}
	}
	for _, x := range committed {
		if !slices.Contains(blocked, x) {
			blocked = append(blocked, x)
		}
	}
	if len(blocked) > 0 {
		return blocked, nil
	}
	var active []*job
	for _, j := range jobs {
		if j.err = j.checkSchema(live); j.err == nil {
			active = append(active, j)
		}
	}
	if len(active) == 0 {
		return nil, nil
	}
	shapes := make([]*fanout.Shape, len(active))
	for i, j := range active {
		shapes[i] = j.shape
	}
	types, err := wheresql.EnumTypes(ctx, conn, shape.Schema)
	if err != nil {
		return nil, err
	}
	q, params, cols, err := wheresql.SelectAll(shapes, types)
	if err != nil {
		return nil, errPermanent{err}
	}
	defer func() {
		for _, j := range jobs {
			if j.w != nil {
				j.w.Abort()
				j.w = nil
			}
		}
	}()
	for _, j := range active {
		out := j.storedColumns()
		j.w, j.err = shapelog.NewSnapshotWriter(g.r.d.Dir, j.shape.Handle, j.st.Generation, j.shape.Table, out, j.shape.PrimaryKey, g.r.cfg.ChunkRows, g.r.cfg.ChunkBytes)
		j.filter, j.lastRows, j.lastBytes = newRowFilter(j.pred, cols, out), 0, 0
		if j.err == nil && j.pred.HasSubqueries() {
			// Its clause is evaluated against its subqueries' results as
			// of this snapshot, read in the same transaction; its rows'
			// messages carry their tags and active conditions.
			res, err := match.BuildResults(j.pred, func(s *match.Subquery) ([]fanout.Row, error) {
				rows, err := pgpool.TextRows(ctx, conn.PgConn(), s.LoadSQL())
				return rows, describe(err)
			})
			if err != nil {
				return nil, fmt.Errorf("read the results of the subqueries of shape %s: %w", j.shape.Handle, err)
			}
			j.filter.withSubqueries(j.shape.Handle, res)
		}
	}
	active = withoutFailed(active)
	if len(active) == 0 {
		return nil, nil
	}
	t = time.Now()
	if err := g.readRows(ctx, conn.PgConn(), q, params, active); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("end snapshot transaction: %w", err)
	}
	g.read = time.Since(t)
	t = time.Now()
	g.completeAll(withoutFailed(active), snap)
	g.complete = time.Since(t)
	return nil, nil
}

// begin takes, in one round trip, the transaction's bounds, the lock,
// then its snapshot, the snapshot's in-progress xids that pg_xact already
// records as committed, and the table's columns now. The lock comes
// before the snapshot (LOCK takes none): no TRUNCATE or schema change can
// commit between the snapshot and the read, nor while it runs (they wait,
// and are then streamed as changes the snapshot did not see).
func (g *group) begin(ctx context.Context, conn *pgconn.PgConn, shape *fanout.Shape) (snap visibility.Snapshot, committed []uint64, live map[string]liveType, err error) {
	schema, name := fanout.SplitTable(shape.Table)
	table := pgx.Identifier{schema, name}.Sanitize()
	sql := ""
	if d := g.r.cfg.StatementTimeout; d > 0 {
		sql += fmt.Sprintf("SET LOCAL statement_timeout = %d; ", d.Milliseconds())
	}
	sql += "SET LOCAL lock_timeout = 60000; LOCK TABLE " + table + " IN ACCESS SHARE MODE; "
	for _, t := range shape.Tables { // what its subqueries read, likewise
		ts, tn := fanout.SplitTable(t.Table)
		sql += "LOCK TABLE " + pgx.Identifier{ts, tn}.Sanitize() + " IN ACCESS SHARE MODE; "
	}
	sql += "SELECT pg_current_snapshot()::text; " +
		"SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x WHERE pg_xact_status(x) = 'committed'; " +
		"SELECT a.attname, a.atttypid, format_type(a.atttypid, NULL) FROM pg_attribute a WHERE a.attrelid = " + quoteLiteral(table) + "::regclass AND a.attnum > 0 AND NOT a.attisdropped"
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55P03" {
			return snap, nil, nil, fmt.Errorf("lock %s for the snapshot: %w", shape.Table, err)
		}
		return snap, nil, nil, fmt.Errorf("begin the snapshot of %s: %w", shape.Table, describe(err))
	}
	n := len(results)
	if n < 3 || len(results[n-3].Rows) != 1 {
		return snap, nil, nil, fmt.Errorf("read pg_current_snapshot(): %d results", n)
	}
	if snap, err = visibility.Parse(string(results[n-3].Rows[0][0])); err != nil {
		return snap, nil, nil, err
	}
	for _, r := range results[n-2].Rows {
		x, err := strconv.ParseUint(string(r[0]), 10, 64)
		if err != nil {
			return snap, nil, nil, fmt.Errorf("check the snapshot's in-progress transactions: %w", err)
		}
		committed = append(committed, x)
	}
	live = map[string]liveType{}
	for _, r := range results[n-1].Rows {
		oid, err := strconv.ParseUint(string(r[1]), 10, 32)
		if err != nil {
			return snap, nil, nil, fmt.Errorf("read the columns of %s: %w", shape.Table, err)
		}
		live[string(r[0])] = liveType{uint32(oid), string(r[2])}
	}
	return snap, committed, live, nil
}

// readRows runs the query and gives each row to every job whose matcher
// accepts it. A job that fails (its files) or is gone (removed, claim
// lost) stops taking rows; the query stops when no job is left.
func (g *group) readRows(ctx context.Context, conn *pgconn.PgConn, q string, params [][]byte, jobs []*job) error {
	rr := conn.ExecParams(ctx, q, params, nil, nil, nil)
	var n int
	for rr.NextRow() {
		raw := rr.Values()
		failed := false
		for _, j := range jobs {
			vals, ok := j.filter.accept(raw)
			if !ok {
				continue
			}
			if err := j.w.AddValuesMeta(vals, j.filter.tags, j.filter.active); err != nil {
				j.err, failed = err, true
				continue
			}
			if rows, _, _ := j.w.Progress(); rows-j.lastRows >= 1000 {
				g.progress(j)
			}
		}
		// Now and then (and on a failure), drop the jobs that cannot go on.
		if n++; failed || n%4096 == 0 {
			for _, j := range jobs {
				if err := j.gone(); err != nil && j.err == nil {
					j.err = err
				}
			}
			if jobs = withoutFailed(jobs); len(jobs) == 0 {
				rr.Close()
				return nil
			}
		}
	}
	if _, err := rr.Close(); err != nil {
		return fmt.Errorf("snapshot query of %s: %w", jobs[0].shape.Table, describe(err))
	}
	for _, j := range jobs {
		g.progress(j)
	}
	return nil
}

// progress publishes a job's progress to the metrics and its state.
func (g *group) progress(j *job) {
	rows, bytes, chunks := j.w.Progress()
	g.r.m.rows.Add(float64(rows - j.lastRows))
	g.r.m.bytes.Add(float64(bytes - j.lastBytes))
	j.lastRows, j.lastBytes = rows, bytes
	j.progress(rows, bytes, chunks)
}

// completeAll makes each job's snapshot durable and current, several at once:
// a burst's many small snapshots wait for their fsyncs together.
func (g *group) completeAll(jobs []*job, snap visibility.Snapshot) {
	sem := make(chan struct{}, completeParallel)
	var wg sync.WaitGroup
	for _, j := range jobs {
		if err := j.gone(); err != nil {
			j.err = err
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			j.snap, j.err = j.w.Complete(snap)
			if j.err == nil {
				j.w = nil
			}
		})
	}
	wg.Wait()
}

// completeParallel is how many snapshots of a group are completed at once:
// the file system commits concurrent fsyncs together.
const completeParallel = 64

// withoutFailed returns the jobs without an error, in order.
func withoutFailed(jobs []*job) []*job {
	out := jobs[:0:0]
	for _, j := range jobs {
		if j.err == nil {
			out = append(out, j)
		}
	}
	return out
}
