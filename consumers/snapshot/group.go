package snapshot

import (
	"context"
	"fmt"
	"time"

	"github.com/fanout/pipeline/fanout/shapestate"
)

// group is a set of claimed jobs of one table (and one schema) whose
// snapshots are read together: one transaction, one pg_current_snapshot(),
// one query whose where clause is the union of theirs, each row given to
// every job whose matcher accepts it (attempt.go). A burst of new shapes on
// a table then costs one scan of it instead of one per shape. Each job's
// snapshot is what it would be alone: the same visibility rule (its rows
// are the table at the snapshot recorded in its manifest) and the same
// membership rule (its matcher decides). What fails for one job (its
// schema, its files, its claim) ends that job only; a failure of the
// group's transaction or query is retried with each job alone, so that one
// shape cannot fail the others.
type group struct {
	r    *Runner
	jobs []*job

	// Where the time went (the debug log "snapshot group done"): the last
	// attempt's transaction prelude, query, and files; the jobs' ends.
	prelude, read, complete, finish time.Duration
}

// run takes the group's snapshots and records each job's end. runner is
// the runner's own context.
func (g *group) run(runner context.Context) {
	for _, j := range g.jobs {
		j.log.Info("snapshot started", "group", len(g.jobs))
	}
	rctx, stopRenew := context.WithCancel(runner)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		g.renew(rctx)
	}()
	defer func() {
		stopRenew()
		<-renewed
	}()
	start := time.Now()
	var live []*job
	for _, j := range g.jobs {
		if err := j.prepare(); err != nil {
			j.finish(runner, nil, err)
			continue
		}
		live = append(live, j)
	}
	g.take(runner, live)
	g.r.log.Debug("snapshot group done", "shapes", len(g.jobs), "took", time.Since(start), "since_claim", time.Since(g.jobs[0].st.Started), "prelude", g.prelude, "read", g.read,
		"complete", g.complete, "finish", g.finish)
}

// renew extends the leases of the unfinished jobs every third of the lease.
func (g *group) renew(ctx context.Context) {
	t := time.NewTicker(g.r.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, j := range g.jobs {
			j.renew(ctx)
		}
	}
}

// take waits for ingest to route the jobs' shapes, then reads their
// snapshots, retaking them while a commit ingest routed before the shapes
// is invisible; then it finishes every job.
func (g *group) take(runner context.Context, jobs []*job) {
	jobs, routing := g.awaitRouting(runner, jobs)
	if len(jobs) == 0 {
		return
	}
	deadline := time.Now().Add(g.r.cfg.VisibilityTimeout)
	backoff := 50 * time.Millisecond
	var lost reconnects
	for {
		blocked, err := g.attempt(runner, jobs, routing)
		jobs = g.finishFailed(runner, jobs)
		if len(jobs) == 0 {
			return
		}
		// A failed connection says nothing of the snapshots: the whole
		// group is taken again, not split.
		retry, wait, err := lost.retry(runner, err, g.r.cfg.ReconnectTimeout)
		if retry {
			g.r.m.reconnects.Inc()
			g.r.log.Warn("the snapshot's Postgres connection failed (a restart?); taking it again on a new connection, not counted against snapshot.max_attempts",
				"shapes", len(jobs), "err", err, "retry_in", wait, "reconnect_timeout", g.r.cfg.ReconnectTimeout)
			if !sleep(runner, wait) {
				for _, j := range jobs {
					j.finish(runner, nil, runner.Err())
				}
				return
			}
			continue
		}
		if err != nil && len(jobs) > 1 && runner.Err() == nil {
			g.r.m.splits.Inc()
			g.r.log.Warn("a group snapshot failed; taking its shapes one by one", "shapes", len(jobs), "err", err)
			for _, j := range jobs {
				g.take(runner, []*job{j})
			}
			return
		}
		if err != nil || blocked == nil {
			t := time.Now()
			for _, j := range jobs {
				j.finish(runner, j.snap, err)
			}
			g.finish = time.Since(t)
			return
		}
		g.r.m.retakes.Inc()
		for _, j := range jobs {
			j.mu.Lock()
			j.st.Retakes++
			j.mu.Unlock()
		}
		if time.Now().After(deadline) {
			err := errPermanent{fmt.Errorf("transactions %v committed in the WAL stayed invisible for snapshot.visibility_timeout (%s): is a synchronous standby (synchronous_standby_names) down?", blocked, g.r.cfg.VisibilityTimeout)}
			for _, j := range jobs {
				j.finish(runner, nil, err)
			}
			return
		}
		g.r.log.Info("a commit already in the WAL is not yet visible; retaking the snapshots when it is", "shapes", len(jobs), "xids", blocked, "retry_in", backoff)
		if !sleep(runner, backoff) {
			for _, j := range jobs {
				j.finish(runner, nil, runner.Err())
			}
			return
		}
		backoff = min(2*backoff, 2*time.Second)
		if jobs, routing = g.awaitRouting(runner, jobs); len(jobs) == 0 {
			return
		}
	}
}

// finishFailed finishes the jobs whose attempt failed on their own (or
// whose shape is gone) and returns the others.
func (g *group) finishFailed(runner context.Context, jobs []*job) []*job {
	live := jobs[:0:0]
	for _, j := range jobs {
		if err := j.gone(); err != nil && j.err == nil {
			j.err = err
		}
		if j.err != nil {
			j.finish(runner, nil, j.err)
			continue
		}
		live = append(live, j)
	}
	return live
}

// awaitRouting waits until ingest routes every job's shape, from the
// runner's watch of its hand-off; a job whose shape is not routed within
// snapshot.routing_timeout of the runner first seeing it fails.
func (g *group) awaitRouting(runner context.Context, jobs []*job) ([]*job, shapestate.Routing) {
	for {
		rt, known, changed := g.r.routing.get()
		var waiting []*job
		next := time.Time{}
		live := jobs[:0:0]
		for _, j := range jobs {
			if err := j.gone(); err != nil {
				j.finish(runner, nil, err)
				continue
			}
			if known && rt.Revision >= j.shapeRev {
				live = append(live, j)
				continue
			}
			until := j.seen.Add(g.r.cfg.RoutingTimeout)
			if time.Now().After(until) {
				err := fmt.Errorf("ingest routes shapes up to revision %d, this shape is revision %d", rt.Revision, j.shapeRev)
				if !known {
					err = fmt.Errorf("no routing state from ingest in KV bucket %s key %s", shapestate.Bucket, shapestate.RoutingKey)
				}
				j.finish(runner, nil, fmt.Errorf("ingest has not started routing the shape within snapshot.routing_timeout (%s): %w (is ingest running?)", g.r.cfg.RoutingTimeout, err))
				continue
			}
			if next.IsZero() || until.Before(next) {
				next = until
			}
			waiting = append(waiting, j)
			live = append(live, j)
		}
		if len(waiting) == 0 {
			return live, rt
		}
		jobs = live
		// A second at most: a removed shape leaves the wait soon.
		t := time.NewTimer(min(time.Until(next), time.Second))
		select {
		case <-changed:
		case <-t.C:
		case <-runner.Done():
		}
		t.Stop()
		if runner.Err() != nil {
			for _, j := range jobs {
				j.finish(runner, nil, runner.Err())
			}
			return nil, rt
		}
	}
}
