// Package snapshot takes the shapes' initial snapshots. Every consumer
// replica runs a Runner; a runner claims a shape whose snapshot is due
// (creating, or snapshotting under a lease that expired: its runner died)
// with a compare-and-set on the shape's state in fanout/shapestate, holds the
// claim by renewing a lease, and writes a new generation of the snapshot
// beside the shape's log (consumers/shapelog). At most snapshot.concurrency
// run at once per replica, on the runner's own connection pool.
//
// The hand-off by xid (job.go): the runner waits until ingest routes the
// shape (shapestate.Routing), then reads the rows in one REPEATABLE READ
// READ ONLY transaction whose snapshot, pg_current_snapshot(), decides which
// logged transactions the rows already contain. WAL is never held: the log
// of a snapshotting shape is persisted and acked as usual, and readers
// filter it by the snapshot once it is complete.
package snapshot

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapestate"
)

// Deps are what a runner needs from the consumer that hosts it.
type Deps struct {
	JS       jetstream.JetStream
	Shapes   jetstream.KeyValue
	Dir      string // storage.dir
	ID       string // consumer.id: the owner named in claims
	Replicas int    // bus.replicas
	Reg      prometheus.Registerer
	Log      *slog.Logger
}

// Runner takes snapshots; see the package comment.
type Runner struct {
	cfg    configs.Snapshot
	d      Deps
	state  jetstream.KeyValue
	pool   *pgpool.Pool
	m      *metrics
	log    *slog.Logger
	shapes map[string]uint64             // registered handle -> its shapes-bucket revision
	states map[string]stateEntry         // states of shapes not ready or failed
	ended  map[string]bool               // shapes ready or failed
	todo   map[string]bool               // registered shapes not ready or failed
	jobs   map[string]context.CancelFunc // running here
	done   chan string                   // a job ended
	wg     sync.WaitGroup                // the jobs
}

// retryPause times the failed attempts is how long a shape waits before
// its next generation.
const retryPause = 5 * time.Second

type stateEntry struct {
	st  *shapestate.State
	rev uint64
}

// Start reads the snapshot configuration and runs a runner on wg until ctx
// ends. With no postgres.url it runs none and says so.
func Start(ctx context.Context, wg *sync.WaitGroup, d Deps) error {
	cfg, err := configs.LoadSnapshotConfig()
	if err != nil {
		return fmt.Errorf("snapshot configuration: %w", err)
	}
	if !cfg.Snapshot.Enabled {
		d.Log.Info("snapshot.enabled is false: this consumer takes no initial snapshots")
		return nil
	}
	if cfg.Postgres.URL == "" {
		d.Log.Warn("postgres.url is not set: this consumer takes no initial snapshots (new shapes stay 'creating' until a consumer with postgres.url takes them)")
		return nil
	}
	r, err := New(ctx, cfg.Postgres.URL, cfg.Snapshot, d)
	if err != nil {
		// The consumer's own job goes on; shapes wait for another runner.
		d.Log.Error("snapshot runner not started: this consumer takes no initial snapshots", "err", err)
		return nil
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.Run(ctx)
	}()
	return nil
}

// New prepares a runner reading from pgURL.
func New(ctx context.Context, pgURL string, cfg configs.Snapshot, d Deps) (*Runner, error) {
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := shapestate.Ensure(kctx, d.JS, d.Replicas, false)
	if err != nil {
		return nil, err
	}
	pool, err := pgpool.New(pgpool.Config{URL: pgURL, Size: cfg.PoolSize, Settings: sessionSettings,
		Name: "fanout-snapshot " + d.ID, Purpose: "a snapshot", ConnectTimeout: 30 * time.Second,
		Reconnect: cfg.ReconnectTimeout, ReconnectKey: "snapshot.reconnect_timeout"})
	if err != nil {
		return nil, err
	}
	return &Runner{
		cfg: cfg, d: d, state: kv, pool: pool, m: newMetrics(d.Reg), log: d.Log.With("component", "snapshot"),
		shapes: map[string]uint64{}, states: map[string]stateEntry{}, ended: map[string]bool{}, todo: map[string]bool{},
		jobs: map[string]context.CancelFunc{}, done: make(chan string, 64),
	}, nil
}

// Run follows the shapes and their states and starts due snapshots until
// ctx ends; then it stops its jobs (their shapes go back to creating, for
// another runner) and closes the pool.
func (r *Runner) Run(ctx context.Context) {
	defer r.pool.Close()
	defer func() {
		for _, cancel := range r.jobs {
			cancel()
		}
		r.wg.Wait()
	}()
	for ctx.Err() == nil {
		if err := r.follow(ctx); err != nil {
			r.log.Error("snapshot runner lost its KV watches; starting them again in 1s", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (r *Runner) follow(ctx context.Context) error {
	sw, err := r.d.Shapes.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch KV bucket %s: %w", fanout.ShapesBucket, err)
	}
	defer sw.Stop()
	tw, err := r.state.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch KV bucket %s: %w", shapestate.Bucket, err)
	}
	defer tw.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-sw.Updates():
			if !ok {
				return fmt.Errorf("watch of %s closed", fanout.ShapesBucket)
			}
			r.onShape(ctx, e)
		case e, ok := <-tw.Updates():
			if !ok {
				return fmt.Errorf("watch of %s closed", shapestate.Bucket)
			}
			r.onState(e)
		case h := <-r.done:
			delete(r.jobs, h)
		case <-tick.C:
			r.schedule(ctx)
		}
	}
}

func (r *Runner) onShape(ctx context.Context, e jetstream.KeyValueEntry) {
	if e == nil {
		return
	}
	h := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		_, known := r.states[h]
		known = known || r.ended[h]
		delete(r.shapes, h)
		delete(r.todo, h)
		delete(r.states, h)
		delete(r.ended, h)
		if cancel := r.jobs[h]; cancel != nil {
			cancel()
		}
		if known {
			// Any runner may clear the state of a removed shape; all agree.
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			r.state.Delete(dctx, h)
			cancel()
		}
		return
	}
	r.shapes[h] = e.Revision() // the definition is read when the snapshot starts
	r.refresh(h)
}

func (r *Runner) onState(e jetstream.KeyValueEntry) {
	if e == nil || e.Key() == shapestate.RoutingKey {
		return
	}
	h := e.Key()
	delete(r.states, h)
	delete(r.ended, h)
	if e.Operation() == jetstream.KeyValuePut {
		if st, err := shapestate.Decode(e.Value()); err == nil {
			if st.Phase == shapestate.Ready || st.Phase == shapestate.Failed {
				r.ended[h] = true // keep no state for finished shapes: there may be 300K
			} else {
				r.states[h] = stateEntry{st, e.Revision()}
			}
		}
	}
	r.refresh(h)
}

// refresh keeps todo: the registered shapes whose snapshot is not done.
func (r *Runner) refresh(h string) {
	_, registered := r.shapes[h]
	if registered && !r.ended[h] {
		r.todo[h] = true
	} else {
		delete(r.todo, h)
	}
}

// schedule claims due shapes while this runner has room.
func (r *Runner) schedule(ctx context.Context) {
	r.m.running.Set(float64(len(r.jobs)))
	now := time.Now()
	for h := range r.todo {
		if len(r.jobs) >= r.cfg.Concurrency {
			return
		}
		if r.jobs[h] != nil {
			continue
		}
		prev, rev := &shapestate.State{Handle: h, Phase: shapestate.Creating}, uint64(0)
		if se, ok := r.states[h]; ok {
			prev, rev = se.st, se.rev
		}
		if prev.Phase == shapestate.Snapshotting && now.Before(prev.LeaseUntil) {
			continue // its runner is alive
		}
		if prev.Phase == shapestate.Creating && now.Before(prev.Updated.Add(time.Duration(prev.Attempts)*retryPause)) {
			continue // a failed attempt: give a passing outage time to pass
		}
		if prev.Phase == shapestate.Snapshotting {
			r.log.Warn("snapshot runner stopped renewing its lease; taking the shape over with a new generation", "shape", h, "owner", prev.Owner, "generation", prev.Generation)
		}
		// A new generation is above every one on disk too: a state lost or
		// reset in KV must not number a generation that readers served.
		latest, err := shapelog.LatestGeneration(r.d.Dir, h)
		if err != nil {
			r.log.Warn("could not list a shape's snapshot generations; trying again", "shape", h, "err", err)
			continue
		}
		gen := max(prev.Generation, latest)
		next := &shapestate.State{
			Handle: h, Phase: shapestate.Snapshotting, Generation: gen + 1,
			Owner: r.d.ID, LeaseUntil: now.Add(r.cfg.Lease).UTC(), Attempts: prev.Attempts, Started: now.UTC(),
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		newRev, err := shapestate.Swap(cctx, r.state, next, rev)
		cancel()
		if err != nil {
			if !shapestate.Lost(err) {
				r.log.Warn("could not claim a shape's snapshot; trying again", "shape", h, "err", err)
			}
			continue // another runner won, or NATS is away
		}
		r.states[h] = stateEntry{next, newRev}
		jctx, stop := context.WithCancel(ctx)
		r.jobs[h] = stop
		j := &job{r: r, handle: h, shapeRev: r.shapes[h], st: *next, rev: newRev}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer stop()
			j.run(jctx, ctx)
			r.done <- h
		}()
	}
}
