package snapshot

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// schedule claims due shapes while this runner has room for another
// group, oldest first, each with up to snapshot.group_shapes - 1 other due
// shapes of its table, and returns when the next shape that is not due yet
// will be (zero: none).
func (r *Runner) schedule(ctx context.Context) time.Time {
	r.m.running.Set(float64(len(r.jobs)))
	if !r.shapesPrimed || !r.statesPrimed || r.groups >= r.cfg.Concurrency {
		return time.Time{}
	}
	now := time.Now()
	var next time.Time
	var due []string
	for h, p := range r.todo {
		if r.jobs[h] != nil || p.invalid {
			continue
		}
		var st *shapestate.State
		if se, ok := r.states[h]; ok {
			st = se.st
		}
		if at := dueAt(st, r.routing.routes(r.shapes[h]), p.seen, r.cfg.RoutingTimeout); at.After(now) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		due = append(due, h)
	}
	slices.SortFunc(due, func(a, b string) int {
		return cmp.Or(r.todo[a].seen.Compare(r.todo[b].seen), cmp.Compare(a, b))
	})
	for len(due) > 0 && r.groups < r.cfg.Concurrency {
		lead := r.definition(ctx, due[0])
		if lead == nil {
			due = due[1:]
			continue
		}
		key := schemaKey(lead)
		members, rest := []string{due[0]}, due[:0:0]
		for _, h := range due[1:] {
			if len(members) < r.cfg.GroupShapes {
				if s := r.definition(ctx, h); s != nil && schemaKey(s) == key {
					members = append(members, h)
					continue
				}
			}
			rest = append(rest, h)
		}
		due = rest
		var jobs []*job
		for _, h := range members {
			if j := r.claim(ctx, h, now); j != nil {
				jobs = append(jobs, j)
			}
		}
		if len(jobs) > 0 {
			r.start(ctx, jobs)
		}
	}
	r.m.running.Set(float64(len(r.jobs)))
	return next
}

// definition returns a due shape's definition, reading it from KV when the
// watch's was not kept; nil (and logged) when it cannot be read, for the
// next schedule to try again.
func (r *Runner) definition(ctx context.Context, h string) *fanout.Shape {
	p := r.todo[h]
	if p.def != nil {
		return p.def
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	e, err := r.d.Shapes.Get(gctx, h)
	cancel()
	if err != nil {
		r.log.Warn("could not read a shape's definition to claim its snapshot; trying again", "shape", h, "err", err)
		return nil
	}
	s, err := fanout.DecodeShape(e.Value())
	if err == nil && s.Handle != h {
		err = fmt.Errorf("stored under key %s, its handle is %s", h, s.Handle)
	}
	if err != nil {
		p.invalid = true
		r.log.Error("shape definition in the shapes bucket is invalid; its snapshot is not taken (fix or remove it with fanoutctl)", "shape", h, "err", err)
		return nil
	}
	p.def = s
	r.shapes[h] = max(r.shapes[h], e.Revision())
	return s
}

// claim takes a due shape with a compare-and-set of its state: a new
// generation, owned by this runner, under a lease. nil when another runner
// won, or KV failed (logged; the next schedule tries again).
func (r *Runner) claim(ctx context.Context, h string, now time.Time) *job {
	prev, rev := &shapestate.State{Handle: h, Phase: shapestate.Creating}, uint64(0)
	if se, ok := r.states[h]; ok {
		prev, rev = se.st, se.rev
	}
	if prev.Phase == shapestate.Snapshotting {
		r.log.Warn("snapshot runner stopped renewing its lease; taking the shape over with a new generation", "shape", h, "owner", prev.Owner, "generation", prev.Generation)
	}
	// A new generation is above every one on disk too: a state lost or
	// reset in KV must not number a generation that readers served.
	latest, err := shapelog.LatestGeneration(r.d.Dir, h)
	if err != nil {
		r.log.Warn("could not list a shape's snapshot generations; trying again", "shape", h, "err", err)
		return nil
	}
	next := &shapestate.State{
		Handle: h, Phase: shapestate.Snapshotting, Generation: max(prev.Generation, latest) + 1,
		Owner: r.d.ID, LeaseUntil: now.Add(r.cfg.Lease).UTC(), Attempts: prev.Attempts, Started: now.UTC(),
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	newRev, err := shapestate.Swap(cctx, r.state, next, rev)
	cancel()
	if err != nil {
		if !shapestate.Lost(err) {
			r.log.Warn("could not claim a shape's snapshot; trying again", "shape", h, "err", err)
		}
		return nil // another runner won, or NATS is away
	}
	r.states[h] = stateEntry{next, newRev}
	p := r.todo[h]
	return &job{r: r, handle: h, shape: p.def, shapeRev: r.shapes[h], seen: p.seen, st: *next, rev: newRev,
		log: r.log.With("shape", h, "generation", next.Generation)}
}

// start runs a group of claimed jobs; its end comes back on r.done.
func (r *Runner) start(ctx context.Context, jobs []*job) {
	handles := make([]string, len(jobs))
	stops := make([]context.CancelFunc, len(jobs))
	for i, j := range jobs {
		j.ctx, stops[i] = context.WithCancel(ctx)
		r.jobs[j.handle] = stops[i]
		handles[i] = j.handle
	}
	r.groups++
	r.m.groups.Inc()
	r.m.groupShapes.Observe(float64(len(jobs)))
	g := &group{r: r, jobs: jobs}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		g.run(ctx)
		for _, stop := range stops {
			stop()
		}
		select {
		case r.done <- handles:
		case <-ctx.Done():
		}
	}()
}
