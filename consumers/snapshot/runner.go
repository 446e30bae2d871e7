// Package snapshot takes the shapes' initial snapshots. Every consumer
// replica runs a Runner; a runner claims a shape whose snapshot is due
// (creating, or snapshotting under a lease that expired: its runner died)
// with a compare-and-set on the shape's state in fanout/shapestate, holds the
// claim by renewing a lease, and writes a new generation of the snapshot
// beside the shape's log (consumers/shapelog). Claims follow the KV watches:
// a shape is claimed the moment ingest routes it, and shapes of one table
// that are due together are claimed together, up to snapshot.group_shapes,
// and read as one group (group.go): one transaction, one query. At most
// snapshot.concurrency groups run at once per replica, on the runner's own
// connection pool.
//
// The hand-off by xid (attempt.go): the runner waits until ingest routes the
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
	cfg     configs.Snapshot
	d       Deps
	state   jetstream.KeyValue
	pool    *pgpool.Pool
	m       *metrics
	log     *slog.Logger
	routing *routingView
	shapes  map[string]uint64             // registered handle -> its shapes-bucket revision
	states  map[string]stateEntry         // states of shapes not ready or failed
	ended   map[string]bool               // shapes ready or failed
	todo    map[string]*pending           // registered shapes not ready or failed
	jobs    map[string]context.CancelFunc // running here
	groups  int                           // groups running here
	done    chan []string                 // a group ended: its shapes
	wg      sync.WaitGroup                // the groups

	// Whether each watch has delivered the values it started with: until
	// both have, a shape's state may be unknown, and nothing is claimed.
	shapesPrimed, statesPrimed bool
}

// pending is a registered shape whose snapshot is not done.
type pending struct {
	seen    time.Time     // when this runner first saw it
	def     *fanout.Shape // its definition, once the runner knows the shape is not done (nil: read it from KV)
	invalid bool          // its definition does not decode: not claimed (said once)
}

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
		routing: newRoutingView(), shapes: map[string]uint64{}, states: map[string]stateEntry{}, ended: map[string]bool{}, todo: map[string]*pending{},
		jobs: map[string]context.CancelFunc{}, done: make(chan []string, 64),
	}, nil
}

// Run follows the shapes and their states and starts due snapshots until
// ctx ends; then it stops its jobs (their shapes go back to creating, for
// another runner) and closes the pool.
func (r *Runner) Run(ctx context.Context) {
	defer r.pool.Close()
	r.sizeConcurrency(ctx)
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

// follow applies the watches' updates and claims due shapes as soon as
// they are due: after each run of updates (one event claims a whole
// burst), when a group ends, and when a lease or a retry pause runs out.
func (r *Runner) follow(ctx context.Context) error {
	r.shapesPrimed, r.statesPrimed = false, false
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
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
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
		case hs := <-r.done:
			r.groups--
			for _, h := range hs {
				delete(r.jobs, h)
			}
		case <-timer.C:
		}
		if len(sw.Updates()) > 0 || len(tw.Updates()) > 0 || len(r.done) > 0 {
			continue // claim once the run of updates is applied
		}
		next := r.schedule(ctx)
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
	}
}

func (r *Runner) onShape(ctx context.Context, e jetstream.KeyValueEntry) {
	if e == nil {
		r.shapesPrimed = true
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
	r.shapes[h] = e.Revision()
	r.refresh(h)
	if p := r.todo[h]; p != nil {
		p.def, p.invalid = nil, false
		if r.statesPrimed {
			// A new shape (the states are known): keep its definition for
			// the claim. Before, most shapes are done: read when claimed.
			if s, err := fanout.DecodeShape(e.Value()); err == nil && s.Handle == h {
				p.def = s
			}
		}
	}
}

func (r *Runner) onState(e jetstream.KeyValueEntry) {
	if e == nil {
		r.statesPrimed = true
		return
	}
	if e.Key() == shapestate.RoutingKey {
		if e.Operation() == jetstream.KeyValuePut {
			if rt, err := shapestate.DecodeRouting(e.Value()); err == nil {
				r.routing.set(rt)
			} else {
				r.log.Warn("ingest's routing state in KV is unreadable; new shapes wait for the next one", "key", shapestate.RoutingKey, "err", err)
			}
		}
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
		if r.todo[h] == nil {
			r.todo[h] = &pending{seen: time.Now()}
		}
	} else {
		delete(r.todo, h)
	}
}
