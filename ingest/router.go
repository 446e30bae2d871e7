package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sort"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
)

// Sink takes finished fragments; the Batcher is one. Flush says that a flush
// point was reached (a transaction's end, a checkpoint): what it holds may go.
type Sink interface {
	Publish(ctx context.Context, txn *Txn, partition int, f *fanout.Fragment) error
	Flush()
}

// Router turns decoded transactions into per-shape fragments. It buffers each
// touched shape's changes and publishes a fragment when that shape's buffer
// is full, at every checkpoint of the transaction (each MaxFragmentChanges
// decoded changes, or MaxBufferedBytes of decoded change data, whichever
// comes first: every buffer goes), and at commit. A shape's cut points are
// a function of its own changes and their index in the transaction, never
// of which other shapes exist, and shape-set changes apply only between
// transactions: a transaction read again after a restart yields the same
// fragments and Nats-Msg-Ids for every shape routed both times.
// It implements Handler and is used by one goroutine.
type Router struct {
	reg        *match.Registry
	partitions int
	limits     Limits
	tracker    *Tracker
	sink       Sink
	metrics    *Metrics
	log        *slog.Logger
	tx         *openTxn
	routed     []routedChange // one change's shapes, reused: no allocation per change

	pending    []ShapeUpdate // updates that arrived inside a transaction
	appliedRev uint64        // highest shapes-bucket revision applied
	decoded    *decodedXids  // transactions routed so far (the snapshot hand-off)
	tables     *tableSet     // shaped tables, for the continuity checks (nil: not kept)
}

type openTxn struct {
	begin Begin
	txn   *Txn
	bufs  map[string]*shapeBuf
	// Since the last checkpoint: decoded changes and their size, counted
	// whether or not any shape takes them.
	sinceChanges int
	sinceBytes   int
}

type shapeBuf struct {
	shape   *fanout.Shape
	changes []fanout.Change
	bytes   int
	seq     int // Seq of the next fragment
}

// NewRouter routes with reg (owned by the router from now on).
func NewRouter(reg *match.Registry, partitions int, limits Limits, tracker *Tracker, sink Sink, m *Metrics, log *slog.Logger) *Router {
	return &Router{reg: reg, partitions: partitions, limits: limits, tracker: tracker, sink: sink, metrics: m, log: log, decoded: newDecodedXids(decodedXidsKept)}
}

// ShapeUpdate adds or replaces a shape, or removes it when Shape is nil.
type ShapeUpdate struct {
	Handle string
	Shape  *fanout.Shape
	// Revision is the shapes-bucket revision of the update (0: unknown).
	Revision uint64
}

// Apply changes the shape set. Inside a transaction the update waits for
// its end: a transaction is routed with one shape set.
func (r *Router) Apply(u ShapeUpdate) {
	if r.tx != nil {
		r.pending = append(r.pending, u)
		return
	}
	r.apply(u)
}

// Applied is the highest shapes-bucket revision in effect, and how many
// transactions had been routed when it took effect.
func (r *Router) Applied() (revision, routedTxns uint64) { return r.appliedRev, r.decoded.count() }

func (r *Router) applyPending() {
	for _, u := range r.pending {
		r.apply(u)
	}
	clear(r.pending)
	r.pending = r.pending[:0]
}

func (r *Router) apply(u ShapeUpdate) {
	r.appliedRev = max(r.appliedRev, u.Revision)
	if old, ok := r.reg.Get(u.Handle); ok {
		r.tables.remove(old.Table)
	}
	if u.Shape == nil {
		r.reg.Remove(u.Handle)
		r.log.Info("shape removed", "shape", u.Handle)
		return
	}
	if err := r.reg.Add(u.Shape); err != nil {
		r.log.Error("shape definition rejected by the matcher; its changes are not routed until it is fixed", "shape", u.Handle, "err", err)
		return
	}
	r.tables.add(u.Shape.Table)
	r.log.Info("shape routed", "shape", u.Handle, "table", u.Shape.Table)
}

// Begin implements Handler.
func (r *Router) Begin(_ context.Context, b Begin) error {
	if r.tx != nil {
		return fmt.Errorf("pgoutput Begin of xid %d while xid %d is open (protocol violation; ingest restarts from the slot)", b.Xid, r.tx.begin.Xid)
	}
	r.tx = &openTxn{begin: b, txn: r.tracker.Begin(), bufs: map[string]*shapeBuf{}}
	return nil
}

// Change implements Handler.
func (r *Router) Change(ctx context.Context, c match.RowChange) error {
	if r.tx == nil {
		return fmt.Errorf("pgoutput change of %s outside a transaction (protocol violation; ingest restarts from the slot)", c.Table)
	}
	r.metrics.Changes.Inc()
	if err := r.checkpoint(ctx, changeSize(fanout.Change{Row: c.New, Old: c.Old})); err != nil {
		return err
	}
	routed := r.routed[:0]
	r.reg.Route(c, func(s *fanout.Shape, ch fanout.Change) { routed = append(routed, routedChange{s, ch}) })
	err := r.add(ctx, routed)
	clear(routed) // the buffers hold what they need; keep no rows alive here
	r.routed = routed
	return err
}

// Truncate implements Handler: every shape of each table is emptied.
func (r *Router) Truncate(ctx context.Context, tables []string) error {
	if r.tx == nil {
		return fmt.Errorf("pgoutput truncate outside a transaction (protocol violation; ingest restarts from the slot)")
	}
	var routed []routedChange
	for _, table := range tables {
		r.metrics.Changes.Inc()
		if err := r.checkpoint(ctx, changeSize(fanout.Change{})); err != nil {
			return err
		}
		r.reg.ShapesOf(table, func(s *fanout.Shape) {
			routed = append(routed, routedChange{s, fanout.Change{Op: fanout.OpTruncate}})
		})
	}
	return r.add(ctx, routed)
}

// Commit implements Handler: every touched shape gets its last fragment.
func (r *Router) Commit(ctx context.Context, c Commit) error {
	tx := r.tx
	if tx == nil {
		return fmt.Errorf("pgoutput Commit at %s without Begin (protocol violation; ingest restarts from the slot)", c.CommitLSN)
	}
	if c.CommitLSN != tx.begin.FinalLSN {
		return fmt.Errorf("pgoutput Commit LSN %s differs from its Begin's final LSN %s (protocol violation)", c.CommitLSN, tx.begin.FinalLSN)
	}
	handles := make([]string, 0, len(tx.bufs))
	for h := range tx.bufs {
		handles = append(handles, h)
	}
	sort.Strings(handles)
	for _, h := range handles {
		if err := r.flush(ctx, tx.bufs[h], true, c.EndLSN); err != nil {
			return err
		}
	}
	r.sink.Flush()
	r.tx = nil
	tx.txn.Commit(c.EndLSN)
	r.metrics.Transactions.Inc()
	r.decoded.add(tx.begin.Xid)
	r.applyPending()
	return nil
}

// Abort forgets the open transaction (the session broke; it comes again,
// routed with the updates that waited for its end).
func (r *Router) Abort() {
	r.tx = nil
	r.applyPending()
}

type routedChange struct {
	shape  *fanout.Shape
	change fanout.Change
}

func (r *Router) add(ctx context.Context, routed []routedChange) error {
	tx := r.tx
	for _, rc := range routed {
		b := tx.bufs[rc.shape.Handle]
		if b == nil {
			b = &shapeBuf{shape: rc.shape}
			tx.bufs[rc.shape.Handle] = b
		}
		size := changeSize(rc.change)
		// Flush before adding, so the commit always finds a change to send
		// with Last set unless the memory bound flushed it.
		if len(b.changes) > 0 && (len(b.changes) >= r.limits.MaxFragmentChanges || b.bytes+size > r.limits.MaxFragmentBytes) {
			if err := r.flush(ctx, b, false, 0); err != nil {
				return err
			}
		}
		b.changes = append(b.changes, rc.change)
		b.bytes += size
	}
	return nil
}

// checkpoint counts one decoded change of size bytes and, when the
// transaction reaches a checkpoint, publishes every buffered shape's
// changes. The checkpoints depend only on the transaction, so each shape's
// cut points do too; buffered memory stays within a checkpoint's worth of
// routed changes.
func (r *Router) checkpoint(ctx context.Context, size int) error {
	tx := r.tx
	if tx.sinceChanges < r.limits.MaxFragmentChanges && tx.sinceBytes+size <= r.limits.MaxBufferedBytes {
		tx.sinceChanges++
		tx.sinceBytes += size
		return nil
	}
	handles := make([]string, 0, len(tx.bufs))
	for h, b := range tx.bufs {
		if len(b.changes) > 0 {
			handles = append(handles, h)
		}
	}
	sort.Strings(handles)
	for _, h := range handles {
		if err := r.flush(ctx, tx.bufs[h], false, 0); err != nil {
			return err
		}
	}
	r.sink.Flush()
	tx.sinceChanges, tx.sinceBytes = 1, size
	return nil
}

// flush publishes b's buffered changes as its next fragment. end is the
// transaction's end LSN, known only for the last fragment.
func (r *Router) flush(ctx context.Context, b *shapeBuf, last bool, end pglogrepl.LSN) error {
	tx := r.tx
	f := &fanout.Fragment{
		Version:    fanout.WireVersion,
		Shape:      b.shape.Handle,
		Xid:        tx.begin.Xid,
		CommitLSN:  tx.begin.FinalLSN,
		EndLSN:     end,
		CommitTime: tx.begin.CommitTime,
		Seq:        b.seq,
		Last:       last,
		Changes:    b.changes,
	}
	if f.Changes == nil {
		f.Changes = []fanout.Change{}
	}
	if err := r.sink.Publish(ctx, tx.txn, fanout.Partition(b.shape.Handle, r.partitions), f); err != nil {
		return err
	}
	b.seq++
	b.changes = nil
	b.bytes = 0
	return nil
}

// changeSize estimates a change's encoded size.
func changeSize(c fanout.Change) int {
	n := 32
	for _, row := range []fanout.Row{c.Row, c.Old, c.Before} {
		for k, v := range row {
			n += len(k) + 8
			if v != nil {
				n += len(*v)
			}
		}
	}
	return n
}
