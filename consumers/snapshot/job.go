package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// job is one claimed generation of one shape's snapshot. A job runs in a
// group (group.go), alone or with other shapes of its table.
type job struct {
	r        *Runner
	handle   string
	ctx      context.Context // ends when the shape is removed or the runner stops
	shape    *fanout.Shape   // the definition the claim was made for (nil: read it from KV)
	shapeRev uint64          // shapes-bucket revision ingest must have applied
	seen     time.Time       // when this runner first saw the shape (the routing timeout counts from it)
	pred     *match.Predicate
	log      *slog.Logger

	mu       sync.Mutex
	st       shapestate.State // the claim as last written
	rev      uint64
	lost     bool // another runner took the shape: write nothing more
	finished bool // ready, failed or handed back: the lease is not renewed

	// The current attempt (group.go's goroutine only).
	w                   *shapelog.SnapshotWriter
	filter              *rowFilter
	lastRows, lastBytes int64
	snap                *shapelog.Snapshot // the completed snapshot
	err                 error              // why the job's attempt failed
}

// errPermanent marks failures a retry cannot fix.
type errPermanent struct{ error }

func (e errPermanent) Unwrap() error { return e.error }

// prepare reads the shape's definition (unless the claim had it) and
// compiles its where clause.
func (j *job) prepare() error {
	if j.shape == nil {
		gctx, cancel := context.WithTimeout(j.ctx, 10*time.Second)
		e, err := j.r.d.Shapes.Get(gctx, j.handle)
		cancel()
		if err != nil {
			return fmt.Errorf("read shape %s from KV bucket %s: %w", j.handle, fanout.ShapesBucket, err)
		}
		if j.shape, err = fanout.DecodeShape(e.Value()); err != nil {
			return errPermanent{err}
		}
		j.shapeRev = max(j.shapeRev, e.Revision())
	}
	pred, err := match.CompileShape(j.shape)
	if err != nil {
		return errPermanent{fmt.Errorf("where clause: %w", err)}
	}
	j.pred = pred
	return nil
}

// finish records the job's end: ready with snap, or failed, or (on
// shutdown) creating again, for another runner. runner is the runner's own
// context.
func (j *job) finish(runner context.Context, snap *shapelog.Snapshot, err error) {
	j.mu.Lock()
	j.finished = true
	j.mu.Unlock()
	log := j.log
	if j.isLost() {
		log.Warn("another runner took this shape over; this generation is abandoned")
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(j.ctx), 10*time.Second)
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
	if j.ctx.Err() != nil && runner.Err() != nil {
		// Shutdown: hand the shape back at once rather than after the lease.
		j.st.Phase, j.st.LeaseUntil, j.st.Owner = shapestate.Creating, time.Time{}, ""
		if err := j.swapLocked(fctx); err != nil {
			log.Warn("snapshot stopped by shutdown; another runner takes it when the lease ends", "err", err)
		}
		return
	}
	if j.ctx.Err() != nil {
		return // the shape was removed
	}
	j.r.m.failed.Inc()
	j.st.Attempts++
	j.st.Error = err.Error()
	var perm errPermanent
	if ref := (refused{}); errors.As(err, &ref) {
		j.st.Refused = ref.code
	}
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

// renew extends the lease with the progress so far; a lost claim stops the
// job's writes (the final swap fails).
func (j *job) renew(ctx context.Context) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.lost || j.finished {
		return
	}
	j.st.LeaseUntil = time.Now().Add(j.r.cfg.Lease).UTC()
	cctx, cancel := context.WithTimeout(ctx, j.r.cfg.Lease/3)
	err := j.swapLocked(cctx)
	cancel()
	if err != nil && !j.lost && ctx.Err() == nil {
		j.log.Warn("snapshot lease not renewed; retrying", "err", err)
	}
}

func (j *job) progress(rows, bytes int64, chunks int) {
	j.mu.Lock()
	j.st.Rows, j.st.Bytes, j.st.Chunks = rows, bytes, chunks
	j.mu.Unlock()
}

// gone reports why the job can write no more, nil while it can: its shape
// was removed, or another runner took it.
func (j *job) gone() error {
	if err := j.ctx.Err(); err != nil {
		return err
	}
	if j.isLost() {
		return errors.New("claim lost to another runner")
	}
	return nil
}

// liveType is a column's type in the table now.
type liveType struct {
	oid  uint32
	name string // format_type's, qualified outside pg_catalog (search_path is pg_catalog)
}

// checkSchema fails the shape when a column it was defined with is gone or
// changed type: its where clause and rows would no longer mean the same.
// live maps the table's columns to their types now.
func (j *job) checkSchema(live map[string]liveType) error {
	var changed []string
	for _, c := range j.shape.Schema {
		// By OID: format_type qualifies the names of other schemas' types,
		// which the shape recorded unqualified.
		if t, ok := live[c.Name]; !ok {
			changed = append(changed, c.Name+" (dropped)")
		} else if c.OID != 0 && t.oid != c.OID || c.OID == 0 && t.name != c.Type {
			changed = append(changed, fmt.Sprintf("%s (%s, was %s)", c.Name, t.name, c.Type))
		}
	}
	if len(changed) > 0 {
		return errPermanent{fmt.Errorf("table %s changed since the shape was added: %s; add the shape again", j.shape.Table, strings.Join(changed, ", "))}
	}
	return nil
}

// storedColumns are the columns a snapshot stores: the projection in table
// order, as the API orders a message's values.
func (j *job) storedColumns() []string {
	var out []string
	for _, c := range j.shape.Schema {
		if j.shape.Projected(c.Name) {
			out = append(out, c.Name)
		}
	}
	return out
}

// reconnects decides whether an attempt that failed on its connection is
// taken again: for up to snapshot.reconnect_timeout since the first such
// failure in a row, with a backoff growing to 5s. Such failures say
// nothing about the snapshot, so they do not count against max_attempts
// until then.
type reconnects struct {
	since   time.Time
	backoff time.Duration
}

func (r *reconnects) retry(ctx context.Context, err error, bound time.Duration) (bool, time.Duration, error) {
	if !pgpool.IsConnectionError(err) || ctx.Err() != nil {
		*r = reconnects{}
		return false, 0, err
	}
	if r.since.IsZero() {
		r.since, r.backoff = time.Now(), 100*time.Millisecond
	}
	if time.Since(r.since) > bound {
		return false, 0, fmt.Errorf("%w (the connection kept failing for longer than snapshot.reconnect_timeout, %s)", err, bound)
	}
	wait := r.backoff
	r.backoff = min(2*r.backoff, 5*time.Second)
	return true, wait, err
}

func describe(err error) error {
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && pe.Code == "42P01":
		return errPermanent{fmt.Errorf("%w (the table was dropped?)", err)}
	case errors.As(err, &pe) && pe.Code == "42501":
		return errPermanent{fmt.Errorf("%w (GRANT SELECT on the table to the role of the consumers' postgres.url, then add the shape again)", err)}
	case errors.As(err, &pe) && strings.HasPrefix(pe.Code, "22"):
		return errPermanent{refused{code: pe.Code, error: fmt.Errorf("%w: Postgres cannot evaluate the where clause on a row of the table; no retry helps until the rows or the clause change", err)}}
	}
	return err
}

// refused is a data error of the snapshot query (SQLSTATE class 22).
type refused struct {
	code string
	error
}

func (r refused) Unwrap() error { return r.error }

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
