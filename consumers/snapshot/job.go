package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/visibility"
)

// job is one claimed generation of one shape's snapshot.
type job struct {
	r        *Runner
	handle   string
	shape    *fanout.Shape // read from the shapes bucket when the job starts
	shapeRev uint64        // shapes-bucket revision ingest must have applied

	mu   sync.Mutex
	st   shapestate.State // the claim as last written
	rev  uint64
	lost bool // another runner took the shape: write nothing more
}

// errPermanent marks failures a retry cannot fix.
type errPermanent struct{ error }

// run takes the snapshot, then records ready, failed or (on shutdown)
// creating, for another runner. runner is the runner's own context.
func (j *job) run(ctx, runner context.Context) {
	log := j.r.log.With("shape", j.handle, "generation", j.st.Generation)
	log.Info("snapshot started")
	rctx, stopRenew := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		j.renew(rctx, log)
	}()
	snap, err := j.take(ctx, log)
	stopRenew()
	<-renewed
	if j.isLost() {
		log.Warn("another runner took this shape over; this generation is abandoned")
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err == nil {
		j.mu.Lock()
		j.st.Phase, j.st.Snapshot, j.st.Error, j.st.LeaseUntil = shapestate.Ready, &snap.Snapshot, "", time.Time{}
		j.st.Rows, j.st.Bytes, j.st.Chunks = snap.Rows, snap.Bytes, len(snap.Chunks)
		err = j.swapLocked(fctx)
		j.mu.Unlock()
		if err == nil {
			j.r.m.completed.Inc()
			log.Info("snapshot ready", "rows", snap.Rows, "bytes", snap.Bytes, "chunks", len(snap.Chunks), "snapshot", snap.Snapshot.String(), "took", time.Since(j.st.Started).Round(time.Millisecond))
			return
		}
		log.Error("snapshot complete but its ready state was not recorded; another runner redoes it", "err", err)
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if ctx.Err() != nil && runner.Err() != nil {
		// Shutdown: hand the shape back at once rather than after the lease.
		j.st.Phase, j.st.LeaseUntil, j.st.Owner = shapestate.Creating, time.Time{}, ""
		if err := j.swapLocked(fctx); err != nil {
			log.Warn("snapshot stopped by shutdown; another runner takes it when the lease ends", "err", err)
		}
		return
	}
	if ctx.Err() != nil {
		return // the shape was removed
	}
	j.r.m.failed.Inc()
	j.st.Attempts++
	j.st.Error = err.Error()
	var perm errPermanent
	if errors.As(err, &perm) || j.st.Attempts >= j.r.cfg.MaxAttempts {
		j.st.Phase, j.st.LeaseUntil = shapestate.Failed, time.Time{}
		log.Error("snapshot failed; the shape is marked failed (fix the cause, then remove and add the shape again)", "attempts", j.st.Attempts, "err", err)
	} else {
		j.st.Phase, j.st.LeaseUntil, j.st.Owner = shapestate.Creating, time.Time{}, ""
		log.Warn("snapshot failed; a new generation will be taken", "attempt", j.st.Attempts, "of", j.r.cfg.MaxAttempts, "err", err)
	}
	if err := j.swapLocked(fctx); err != nil {
		log.Error("could not record the snapshot's failure; another runner retries when the lease ends", "err", err)
	}
}

func (j *job) isLost() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lost
}

// swapLocked writes j.st over the claim; j.mu is held.
func (j *job) swapLocked(ctx context.Context) error {
	if j.lost {
		return errors.New("claim lost to another runner")
	}
	rev, err := shapestate.Swap(ctx, j.r.state, &j.st, j.rev)
	if shapestate.Lost(err) {
		j.lost = true
	}
	if err != nil {
		return err
	}
	j.rev = rev
	return nil
}

// renew extends the lease every third of it, with the progress so far; a
// lost claim stops the job's writes (the final swap fails).
func (j *job) renew(ctx context.Context, log interface{ Warn(string, ...any) }) {
	t := time.NewTicker(j.r.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		j.mu.Lock()
		j.st.LeaseUntil = time.Now().Add(j.r.cfg.Lease).UTC()
		cctx, cancel := context.WithTimeout(ctx, j.r.cfg.Lease/3)
		err := j.swapLocked(cctx)
		cancel()
		lost := j.lost
		j.mu.Unlock()
		if lost {
			return
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("snapshot lease not renewed; retrying", "err", err)
		}
	}
}

func (j *job) progress(rows, bytes int64, chunks int) {
	j.mu.Lock()
	j.st.Rows, j.st.Bytes, j.st.Chunks = rows, bytes, chunks
	j.mu.Unlock()
}

// take waits for ingest to route the shape, then reads the snapshot,
// retaking it while a commit ingest routed before the shape is invisible.
func (j *job) take(ctx context.Context, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}) (*shapelog.Snapshot, error) {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	e, err := j.r.d.Shapes.Get(gctx, j.handle)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("read shape %s from KV bucket %s: %w", j.handle, fanout.ShapesBucket, err)
	}
	if j.shape, err = fanout.DecodeShape(e.Value()); err != nil {
		return nil, errPermanent{err}
	}
	j.shapeRev = max(j.shapeRev, e.Revision())
	pred, err := match.CompileParams(j.shape.Where, j.shape.Params, j.shape.Schema)
	if err != nil {
		return nil, errPermanent{fmt.Errorf("where clause: %w", err)}
	}
	routing, err := j.awaitRouting(ctx)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(j.r.cfg.VisibilityTimeout)
	backoff := 50 * time.Millisecond
	for {
		snap, blocked, err := j.attempt(ctx, pred, routing)
		if err != nil || blocked == nil {
			return snap, err
		}
		j.r.m.retakes.Inc()
		j.mu.Lock()
		j.st.Retakes++
		j.mu.Unlock()
		if time.Now().After(deadline) {
			return nil, errPermanent{fmt.Errorf("transactions %v committed in the WAL stayed invisible for snapshot.visibility_timeout (%s): is a synchronous standby (synchronous_standby_names) down?", blocked, j.r.cfg.VisibilityTimeout)}
		}
		log.Info("a commit already in the WAL is not yet visible; retaking the snapshot when it is", "xids", blocked, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, 2*time.Second)
		if routing, err = j.awaitRouting(ctx); err != nil {
			return nil, err
		}
	}
}

// awaitRouting waits until ingest has applied the shape's revision.
func (j *job) awaitRouting(ctx context.Context) (shapestate.Routing, error) {
	deadline := time.Now().Add(j.r.cfg.RoutingTimeout)
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rt, err := shapestate.GetRouting(gctx, j.r.state)
		cancel()
		if err == nil && rt.Revision >= j.shapeRev {
			return rt, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("ingest routes shapes up to revision %d, this shape is revision %d", rt.Revision, j.shapeRev)
			}
			return rt, fmt.Errorf("ingest has not started routing the shape within snapshot.routing_timeout (%s): %w (is ingest running?)", j.r.cfg.RoutingTimeout, err)
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return rt, ctx.Err()
		}
	}
}

// attempt reads one snapshot. It returns blocked xids instead when the
// snapshot does not see a transaction whose commit is already in the WAL
// (routed by ingest before this shape, or committed in pg_xact yet still in
// progress, e.g. waiting for a synchronous standby): its rows would miss it,
// and so would the shape's log.
func (j *job) attempt(ctx context.Context, pred *match.Predicate, routing shapestate.Routing) (*shapelog.Snapshot, []uint64, error) {
	conn, err := j.r.pool.Acquire(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer j.r.pool.Release(conn)
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, nil, fmt.Errorf("begin snapshot transaction: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	simple := pgx.QueryExecModeSimpleProtocol
	if d := j.r.cfg.StatementTimeout; d > 0 {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", d.Milliseconds()), simple); err != nil {
			return nil, nil, err
		}
	}
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = 60000", simple); err != nil {
		return nil, nil, err
	}
	schema, name := fanout.SplitTable(j.shape.Table)
	table := pgx.Identifier{schema, name}.Sanitize()
	// The lock comes before the snapshot (LOCK takes none): no TRUNCATE or
	// schema change can commit between the snapshot and the read, nor while
	// it runs (they wait, and are then streamed as changes the snapshot did
	// not see).
	if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN ACCESS SHARE MODE", simple); err != nil {
		return nil, nil, fmt.Errorf("lock %s for the snapshot: %w", j.shape.Table, err)
	}
	var text string
	if err := tx.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&text); err != nil {
		return nil, nil, fmt.Errorf("read pg_current_snapshot(): %w", err)
	}
	snap, err := visibility.Parse(text)
	if err != nil {
		return nil, nil, err
	}
	if blocked, err := j.invisibleCommits(ctx, tx, snap, routing); err != nil || len(blocked) > 0 {
		return nil, blocked, err
	}
	if err := j.checkSchema(ctx, tx, schema, name); err != nil {
		return nil, nil, err
	}

	q, cols, err := selectSQL(j.shape)
	if err != nil {
		return nil, nil, errPermanent{err}
	}
	// The stored columns: the projection in table order, as the API orders
	// a message's values.
	var out []string
	for _, c := range cols {
		if j.shape.Projected(c) {
			out = append(out, c)
		}
	}
	w, err := shapelog.NewSnapshotWriter(j.r.d.Dir, j.shape.Handle, j.st.Generation, j.shape.Table, out, j.shape.PrimaryKey, j.r.cfg.ChunkRows, j.r.cfg.ChunkBytes)
	if err != nil {
		return nil, nil, err
	}
	done := false
	defer func() {
		if !done {
			w.Abort()
		}
	}()
	params := make([][]byte, len(j.shape.Params))
	for i, p := range j.shape.Params {
		params[i] = []byte(p)
	}
	rr := conn.PgConn().ExecParams(ctx, q, params, nil, nil, nil)
	filter := newRowFilter(pred, cols, out)
	var lastRows, lastBytes int64
	for rr.NextRow() {
		vals, ok := filter.accept(rr.Values())
		if !ok {
			continue
		}
		if err := w.AddValues(vals); err != nil {
			rr.Close()
			return nil, nil, err
		}
		if rows, bytes, chunks := w.Progress(); rows-lastRows >= 1000 {
			j.r.m.rows.Add(float64(rows - lastRows))
			j.r.m.bytes.Add(float64(bytes - lastBytes))
			lastRows, lastBytes = rows, bytes
			j.progress(rows, bytes, chunks)
			if j.isLost() {
				rr.Close()
				return nil, nil, errors.New("claim lost to another runner")
			}
		}
	}
	if _, err := rr.Close(); err != nil {
		return nil, nil, fmt.Errorf("snapshot query of %s: %w", j.shape.Table, describe(err))
	}
	rows, bytes, chunks := w.Progress()
	j.r.m.rows.Add(float64(rows - lastRows))
	j.r.m.bytes.Add(float64(bytes - lastBytes))
	j.progress(rows, bytes, chunks)
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, fmt.Errorf("end snapshot transaction: %w", err)
	}
	if j.isLost() {
		return nil, nil, errors.New("claim lost to another runner")
	}
	s, err := w.Complete(snap)
	if err != nil {
		return nil, nil, err
	}
	done = true
	return s, nil, nil
}

// invisibleCommits lists the snapshot's in-progress xids whose commit is
// already in the WAL: those ingest reported routing before the shape, and
// any pg_xact already records as committed.
func (j *job) invisibleCommits(ctx context.Context, tx pgx.Tx, snap visibility.Snapshot, routing shapestate.Routing) ([]uint64, error) {
	var blocked []uint64
	for _, x := range routing.Decoded {
		if _, in := slices.BinarySearch(snap.Xip, x); in {
			blocked = append(blocked, x)
		}
	}
	if len(snap.Xip) == 0 {
		return blocked, nil
	}
	rows, err := tx.Query(ctx, "SELECT x::text::bigint FROM pg_snapshot_xip($1::text::pg_snapshot) AS x WHERE pg_xact_status(x) = 'committed'", snap.String())
	if err != nil {
		return nil, fmt.Errorf("check the snapshot's in-progress transactions: %w", err)
	}
	xs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("check the snapshot's in-progress transactions: %w", err)
	}
	for _, x := range xs {
		if !slices.Contains(blocked, uint64(x)) {
			blocked = append(blocked, uint64(x))
		}
	}
	return blocked, nil
}

// checkSchema fails the shape when a column it was defined with is gone or
// changed type: its where clause and rows would no longer mean the same.
func (j *job) checkSchema(ctx context.Context, tx pgx.Tx, schema, name string) error {
	rows, err := tx.Query(ctx, `SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`, schema, name)
	if err != nil {
		return fmt.Errorf("read the columns of %s: %w", j.shape.Table, err)
	}
	live := map[string]string{}
	var col, typ string
	_, err = pgx.ForEachRow(rows, []any{&col, &typ}, func() error { live[col] = typ; return nil })
	if err != nil {
		return fmt.Errorf("read the columns of %s: %w", j.shape.Table, err)
	}
	var changed []string
	for _, c := range j.shape.Schema {
		if t, ok := live[c.Name]; !ok {
			changed = append(changed, c.Name+" (dropped)")
		} else if t != c.Type {
			changed = append(changed, fmt.Sprintf("%s (%s, was %s)", c.Name, t, c.Type))
		}
	}
	if len(changed) > 0 {
		return errPermanent{fmt.Errorf("table %s changed since the shape was added: %s; add the shape again", j.shape.Table, strings.Join(changed, ", "))}
	}
	return nil
}

func describe(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return errPermanent{fmt.Errorf("%w (the table was dropped?)", err)}
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
