package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/consumers/wheresql"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapes"
)

// subqueries is the router's side of shapes with subqueries: the registry
// keeps their results and decides their moves (fanout/match/deps.go); this
// asks the reader for what needs Postgres (subqread.go) and places what it
// read in the stream.
//
// A move-in: a transaction T moves values into a subquery's result; the
// shape's fragment of T holds the move-in event and opens a window
// (fanout/moves.go). At T's commit the rows are read in a snapshot S. The
// transactions S saw are exactly those up to some point B of the commit
// order, and the router routes them before the rows: when it begins a
// transaction S did not see, or is idle past the WAL position read with S,
// it publishes the rows (matched with the results as they stand then) at a
// position between B and that transaction, and the window closes.
//
// Under load the router is often past B already when the read returns: it
// routed transactions S did not see (post-B) while the read ran. The rows
// are then placed at once, after those transactions, less the rows those
// transactions changed: their changes are newer than the read, and each is
// a whole row (an update of a row whose value's move-in is pending travels
// as an insert of the whole row: match/depmoves.go), a delete, or a row the
// client held before. So the window records, while it is open, the keys of
// the shape's rows each transaction changes.
//
// Until a window closes, readers of the shape's log wait (shapelog.ReadLog),
// and ingest confirms WAL only up to T (Hold), so a restart reads T again.
type subqueries struct {
	reg     *match.Registry
	reader  *subqReader // nil: no reads (the results then never load)
	log     *slog.Logger
	metrics *Metrics
	limits  Limits

	open    []*moveWindow            // windows not closed, in the order their transactions committed
	byShape map[string][]*moveWindow // the same, by shape
	waitRev map[string]uint64        // shapes waiting for their results: their shapes-bucket revision
	lastXid uint32                   // the last transaction routed
	lastLSN pglogrepl.LSN            // its commit LSN
	placed  map[string]int           // seqs used per shape at placement position lastLSN+2
	hold    atomic.Uint64            // commit LSN of the oldest open window (0: none), for the status sender
	gen     uint64                   // bumped by reset: reads asked before are stale
	rotate  func(match.Rotation)
}

// moveWindow is one transaction's move-ins of one shape: one read, one
// placement.
type moveWindow struct {
	handle    string
	shape     *fanout.Shape
	commitLSN pglogrepl.LSN
	xid       uint32
	moveIns   []match.MoveIn
	reading   bool
	begun     []uint32            // xids of the transactions begun while it is open
	touched   map[uint32][]string // the shape's row keys each of them changed
	nTouched  int
	overflow  bool // too many of them to keep: take the read again
	late      bool // the read came back after the router began a transaction it did not see
	result    *subqResult
}

// Bounds of what an open window records: beyond them the read is taken
// again (its record starts over).
const (
	maxBegunWhileReading = 1 << 16
	maxTouchedWhileOpen  = 1 << 20
)

func newSubqueries(reg *match.Registry, reader *subqReader, limits Limits, m *Metrics, log *slog.Logger, rotate func(match.Rotation)) *subqueries {
	return &subqueries{reg: reg, reader: reader, limits: limits, metrics: m, log: log, waitRev: map[string]uint64{}, placed: map[string]int{}, byShape: map[string][]*moveWindow{}, rotate: rotate}
}

// reset forgets the open windows and the reads in flight (a replication
// session starts again: the stream brings their moves again) and bumps the
// generation, so results of reads asked before are dropped.
func (q *subqueries) reset() {
	q.open, q.byShape = nil, map[string][]*moveWindow{}
	clear(q.placed)
	q.gen++
	if q.reader != nil {
		q.reader.drop()
	}
	q.setHold()
}

// Hold is the highest position ingest may confirm to Postgres while move-ins
// are open: just before the oldest one's transaction, so that a restart
// decodes it again and reads its rows anew. 0: no hold.
func (q *subqueries) Hold() pglogrepl.LSN {
	h := q.hold.Load()
	if h == 0 {
		return 0
	}
	return pglogrepl.LSN(h - 1)
}

func (q *subqueries) setHold() {
	var h uint64
	if len(q.open) > 0 {
		h = uint64(q.open[0].commitLSN)
	}
	q.hold.Store(h)
	q.metrics.OpenMoveIns.Set(float64(len(q.open)))
}

// applied notes a shape added to the registry at revision rev: while it
// waits for its subqueries' results, the revision routed stays below it.
func (q *subqueries) applied(handle string, rev uint64) {
	if q.reg.IsWaiting(handle) {
		q.waitRev[handle] = rev
	} else {
		delete(q.waitRev, handle)
	}
}

// routedRevision is the shapes-bucket revision every shape up to which is
// routed, given the highest applied.
func (q *subqueries) routedRevision(applied uint64) uint64 {
	for h, rev := range q.waitRev {
		if !q.reg.IsWaiting(h) {
			delete(q.waitRev, h) // routed, or dropped by a failed load
			continue
		}
		applied = min(applied, rev-1)
	}
	return applied
}

// beforeTxn runs as the router begins transaction b: the reads whose
// snapshot did not see b are placed (b comes after them), the in-flight
// reads note b, and the registry learns the transaction.
func (q *subqueries) beforeTxn(ctx context.Context, r *Router, b Begin) error {
	if err := q.place(ctx, r, func(w *moveWindow) bool {
		return w.late || b.FinalLSN >= w.result.walLSN || !w.result.snap.Visible(b.Xid)
	}); err != nil {
		return err
	}
	for _, w := range q.open {
		if w.overflow {
			continue
		}
		if len(w.begun) >= maxBegunWhileReading {
			q.overflow(w)
			continue
		}
		w.begun = append(w.begun, b.Xid)
	}
	q.reg.BeginTxn(b.Xid, uint64(b.FinalLSN))
	q.routed()
	return nil
}

// routed logs the shapes whose results became ready.
func (q *subqueries) routed() {
	for _, h := range q.reg.TakeReady() {
		q.log.Info("shape routed: its subqueries' results are loaded", "shape", h)
	}
}

// idle runs when the stream is idle past walEnd (a keepalive, no open
// transaction): reads whose snapshot lies below it are placed.
func (q *subqueries) idle(ctx context.Context, r *Router, walEnd pglogrepl.LSN) error {
	if walEnd == 0 {
		return nil
	}
	q.reg.Idle(uint64(walEnd))
	q.routed()
	return q.place(ctx, r, func(w *moveWindow) bool { return w.late || walEnd >= w.result.walLSN })
}

// touch records that transaction xid changed key (a row of shape handle)
// in the shape's open windows.
func (q *subqueries) touch(sh *fanout.Shape, xid uint32, c fanout.Change) {
	for _, w := range q.byShape[sh.Handle] {
		if w.overflow {
			continue
		}
		row := c.Row
		if row == nil {
			row = c.Old
		}
		if row == nil {
			continue
		}
		k := rowKeyOf(sh.PrimaryKey, row)
		if c.Old != nil && c.Row != nil {
			if ok := rowKeyOf(sh.PrimaryKey, c.Old); ok != k {
				q.touchKey(w, xid, ok)
			}
		}
		q.touchKey(w, xid, k)
	}
}

func (q *subqueries) touchKey(w *moveWindow, xid uint32, k string) {
	if w.nTouched >= maxTouchedWhileOpen {
		q.overflow(w)
		return
	}
	if w.touched == nil {
		w.touched = map[uint32][]string{}
	}
	w.touched[xid] = append(w.touched[xid], k)
	w.nTouched++
}

// overflow gives up what w recorded: its read is taken again, and the new
// read sees every transaction recorded so far.
func (q *subqueries) overflow(w *moveWindow) {
	q.metrics.SubqueryRetakes.Inc()
	q.read(w)
}

// watching reports whether shape handle has an open window.
func (q *subqueries) watching(handle string) bool { return len(q.byShape[handle]) > 0 }

// rowKeyOf joins a row's primary key values.
func rowKeyOf(pk []string, row fanout.Row) string {
	var b strings.Builder
	for _, c := range pk {
		if v := row[c]; v != nil {
			b.WriteString(*v)
		}
		b.WriteByte(0)
	}
	return b.String()
}

// afterChange collects what routing a change asked for: results to load,
// move-ins (one window per shape and transaction), shapes to rotate.
func (q *subqueries) afterChange(tx *openTxn) {
	for _, req := range q.reg.TakeLoads() {
		q.load(req)
	}
	for _, mi := range q.reg.TakeMoveIns() {
		if tx == nil {
			continue // outside a transaction (a load): nothing to move
		}
		if tx.windows == nil {
			tx.windows = map[string]*moveWindow{}
		}
		w := tx.windows[mi.Handle]
		if w == nil {
			sh, _ := q.reg.Get(mi.Handle)
			w = &moveWindow{handle: mi.Handle, shape: sh, commitLSN: tx.begin.FinalLSN, xid: tx.begin.Xid}
			tx.windows[mi.Handle] = w
			tx.windowOrder = append(tx.windowOrder, w)
			if q.hold.Load() == 0 {
				// Held from now on, before any of the transaction is
				// published, so confirmation never passes it.
				q.hold.Store(uint64(tx.begin.FinalLSN))
			}
		}
		w.moveIns = append(w.moveIns, mi)
	}
	for _, rot := range q.reg.TakeRotations() {
		q.metrics.Rotations.Inc()
		q.rotate(rot)
	}
}

// afterCommit starts the reads of the committed transaction's windows.
func (q *subqueries) afterCommit(tx *openTxn) {
	q.lastXid = tx.begin.Xid
	if tx.begin.FinalLSN != q.lastLSN {
		q.lastLSN = tx.begin.FinalLSN
		clear(q.placed)
	}
	for _, w := range tx.windowOrder {
		q.open = append(q.open, w)
		q.byShape[w.handle] = append(q.byShape[w.handle], w)
		q.read(w)
	}
	if len(tx.windowOrder) > 0 {
		q.setHold()
	}
}

// load asks the reader for results.
func (q *subqueries) load(req match.LoadRequest) {
	if q.reader == nil {
		q.log.Error("a shape has subqueries but ingest has no reader for them; it is not routed")
		return
	}
	q.reader.submit(subqJob{load: &req, gen: q.gen})
}

// read asks the reader for w's rows.
func (q *subqueries) read(w *moveWindow) {
	w.reading, w.begun, w.touched, w.nTouched, w.overflow, w.late, w.result = true, nil, nil, 0, false, false, nil
	if q.reader == nil {
		return
	}
	sql, args, err := moveInSQL(w)
	if err != nil {
		q.fail(w, err)
		return
	}
	q.reader.submit(subqJob{moveIn: &moveInRead{w: w, sql: sql, args: args}, gen: q.gen})
}

// result takes a finished read.
func (q *subqueries) result(res subqResult) {
	if res.job.gen != q.gen {
		return // asked before the session started again
	}
	switch {
	case res.job.load != nil:
		if res.err != nil {
			q.log.Error("subquery results could not be loaded; the shapes using them are not routed (their snapshots fail): check the subqueries and the connection", "err", res.err)
			q.reg.LoadFailed(res.job.load.Subqueries, res.err)
			return
		}
		q.reg.Loaded(res.load)
	case res.job.moveIn != nil:
		w := res.job.moveIn.w
		if !q.isOpen(w) {
			return // its shape was rotated meanwhile
		}
		if res.err != nil {
			q.fail(w, res.err)
			return
		}
		if w.overflow {
			q.read(w) // what it recorded meanwhile is lost: read again
			return
		}
		for _, x := range w.begun {
			// The router began a transaction the read did not see: the
			// rows go at once, after it, less those it changed (place).
			w.late = w.late || !res.snap.Visible(x)
		}
		w.reading = false
		r := res
		w.result = &r
	}
}

func (q *subqueries) isOpen(w *moveWindow) bool {
	for _, x := range q.open {
		if x == w {
			return true
		}
	}
	return false
}

// fail gives up a window: its shape cannot be kept exact, so it is rotated
// (clients refetch).
func (q *subqueries) fail(w *moveWindow, err error) {
	q.log.Error("the rows a move-in brings could not be read; the shape is rotated (clients get 409 and refetch)", "shape", w.handle, "err", err)
	q.drop(w)
	q.metrics.Rotations.Inc()
	q.rotate(match.Rotation{Handle: w.handle, Reason: "move-in read failed: " + err.Error()})
}

func (q *subqueries) drop(w *moveWindow) {
	for i, x := range q.open {
		if x == w {
			q.open = append(q.open[:i], q.open[i+1:]...)
			break
		}
	}
	ws := q.byShape[w.handle]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(q.byShape, w.handle)
	} else {
		q.byShape[w.handle] = ws
	}
	q.setHold()
}

// place publishes the rows of the windows whose reads passed says the
// stream has passed, and closes them. They go between the last transaction
// routed and the next, at the LSN two bytes into the last one's commit
// record: never a commit LSN, and neither the +1 nor the end-1 of one,
// which the HTTP API hands out as watermarks (shapeapi.Watermark), so an
// offset <watermark>_0 never falls on them.
func (q *subqueries) place(ctx context.Context, r *Router, passed func(w *moveWindow) bool) error {
	at := q.lastLSN + 2
	var due []*moveWindow
	for _, w := range q.open {
		if w.result != nil && passed(w) {
			due = append(due, w)
		}
	}
	if len(due) == 0 {
		return nil
	}
	for i, w := range due {
		last := true
		for _, later := range due[i+1:] {
			last = last && later.handle != w.handle
		}
		// Windows of one shape placed at one point (now or earlier since
		// the last transaction) share the position's seqs.
		if err := q.placeWindow(ctx, r, w, at, q.placed, last); err != nil {
			return err
		}
		q.drop(w)
	}
	r.sink.Flush()
	return nil
}

func (q *subqueries) placeWindow(ctx context.Context, r *Router, w *moveWindow, at pglogrepl.LSN, seq map[string]int, lastOfShape bool) error {
	rows := w.result.rows
	if w.late {
		// Rows changed by transactions the read did not see: their
		// changes, already routed, are newer than the read.
		newer := map[string]bool{}
		for _, x := range w.begun {
			if !w.result.snap.Visible(x) {
				for _, k := range w.touched[x] {
					newer[k] = true
				}
			}
		}
		if len(newer) > 0 && w.shape != nil {
			kept := rows[:0:0]
			for _, row := range rows {
				if !newer[rowKeyOf(w.shape.PrimaryKey, row)] {
					kept = append(kept, row)
				}
			}
			rows = kept
		}
	}
	changes := r.reg.MoveInRows(w.handle, rows)
	snap := w.result.snap
	changes = append(changes, fanout.Change{Op: fanout.OpSnapshotEnd, Snapshot: &snap})
	txn := r.tracker.Begin()
	now := time.Now().UTC()
	for start := 0; start < len(changes); {
		end, size := start, 0
		for end < len(changes) && end-start < q.limits.MaxFragmentChanges {
			cs := changeSize(changes[end])
			if end > start && size+cs > q.limits.MaxFragmentBytes {
				break
			}
			size += cs
			end++
		}
		f := &fanout.Fragment{
			Version: fanout.WireVersion, Shape: w.handle, Xid: q.lastXid,
			CommitLSN: at, EndLSN: at, CommitTime: now, Seq: seq[w.handle],
			Changes: changes[start:end],
		}
		if end == len(changes) {
			f.ClosesWindows = 1
			f.Last = lastOfShape
		}
		if err := r.sink.Publish(ctx, txn, fanout.Partition(w.handle, r.partitions), f); err != nil {
			return err
		}
		seq[w.handle]++
		start = end
	}
	txn.Commit(at)
	for _, mi := range w.moveIns {
		r.reg.MoveInDone(mi.Handle, mi.Sub, mi.Tuples)
	}
	q.metrics.MoveIns.Inc()
	return nil
}

// moveInSQL is the read of a window's rows: the shape's table, every
// column, its whole clause (Postgres evaluates the subqueries in the read's
// snapshot), narrowed to the rows whose left sides hold the values moved.
func moveInSQL(w *moveWindow) (string, []string, error) {
	s := w.shape
	if s == nil {
		return "", nil, fmt.Errorf("shape %s is no longer registered", w.handle)
	}
	where, err := wheresql.Deparse(s.Where)
	if err != nil {
		return "", nil, err
	}
	cols := make([]string, len(s.Schema))
	types := map[string]string{}
	for i, c := range s.Schema {
		cols[i] = quoteIdent(c.Name)
		types[c.Name] = c.Type
	}
	schema, name := fanout.SplitTable(s.Table)
	args := append([]string(nil), s.Params...)
	var narrow []string
	for _, mi := range w.moveIns {
		lt := make([]string, len(mi.Sub.Left))
		for i, l := range mi.Sub.Left {
			lt[i] = types[l]
		}
		cond, a, ok := mi.Sub.MoveInSQL(mi.Tuples, len(args)+1, lt)
		if !ok {
			narrow = nil
			break
		}
		narrow = append(narrow, cond)
		args = append(args, a...)
	}
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + quoteIdent(schema) + "." + quoteIdent(name) + " WHERE (" + where + ")"
	if len(narrow) > 0 {
		q += " AND (" + strings.Join(narrow, " OR ") + ")"
	} else {
		args = append([]string(nil), s.Params...)
	}
	return q, args, nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// truncated rotates the shapes that read table through subqueries: a
// TRUNCATE empties their results without saying which values left.
func (q *subqueries) truncated(table string) {
	for _, h := range q.reg.DependentsOf(table) {
		q.metrics.Rotations.Inc()
		q.rotate(match.Rotation{Handle: h, Reason: "table " + table + ", which its subqueries read, was truncated"})
	}
}

// relation rotates the shapes whose subqueries read table when its columns
// are no longer those the shape was created with: a column a subquery reads
// may be gone or hold other values (ALTER COLUMN TYPE ... USING, a column
// dropped and added again), and the results ingest holds cannot follow,
// since Postgres rewrites the table without row changes in the stream.
// Columns added after the shape's are harmless. The shape is removed, so
// the one its clients get next reads the schema anew (Rotation.Remove).
func (q *subqueries) relation(table string, cols []fanout.Column) {
	if !q.reg.TablesRead(table) {
		return
	}
	for _, h := range q.reg.DependentsOf(table) {
		s, ok := q.reg.Get(h)
		if !ok {
			continue
		}
		for _, ts := range s.Tables {
			if ts.Table == table && !sameColumns(ts.Schema, cols) {
				q.metrics.Rotations.Inc()
				q.rotate(match.Rotation{Handle: h, Remove: true, Reason: "the schema of table " + table + ", which its subqueries read, changed"})
				break
			}
		}
	}
}

// sameColumns reports whether the columns a shape was created with are the
// first of a table's columns now, with the same types.
func sameColumns(was []fanout.Column, now []fanout.Column) bool {
	if len(now) < len(was) {
		return false
	}
	for i, c := range was {
		if now[i].Name != c.Name || now[i].OID != c.OID {
			return false
		}
	}
	return true
}

// rotator removes the shapes the router cannot keep exact, off its
// goroutine: clients get 409 and refetch, which creates them again.
type rotator struct {
	bus  *fanout.Bus
	log  *slog.Logger
	mu   sync.Mutex
	todo []match.Rotation
	wake chan struct{}
}

func newRotator(bus *fanout.Bus, log *slog.Logger) *rotator {
	return &rotator{bus: bus, log: log, wake: make(chan struct{}, 1)}
}

// submit queues a rotation; it never blocks.
func (r *rotator) submit(rot match.Rotation) {
	r.mu.Lock()
	for _, x := range r.todo {
		if x.Handle == rot.Handle {
			r.mu.Unlock()
			return
		}
	}
	r.todo = append(r.todo, rot)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *rotator) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		}
		for {
			r.mu.Lock()
			if len(r.todo) == 0 {
				r.mu.Unlock()
				break
			}
			rot := r.todo[0]
			r.todo = r.todo[1:]
			r.mu.Unlock()
			if rot.Remove {
				r.log.Warn("rotating a shape with subqueries: it is removed, its clients get 409 and refetch it (the HTTP API creates it anew)", "shape", rot.Handle, "reason", rot.Reason)
			} else {
				r.log.Warn("rotating a shape with subqueries: it is replaced by a new one, and its clients get 409 and refetch it", "shape", rot.Handle, "reason", rot.Reason)
			}
			for attempt := 1; ; attempt++ {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				var err error
				if rot.Remove {
					err = shapes.Remove(rctx, r.bus, rot.Handle, shapes.WithRemoveLog(r.log))
				} else {
					var rep shapes.Replaced
					if rep, err = shapes.ReplaceShape(rctx, r.bus, rot.Handle, r.log); err == nil {
						r.log.Info("shape rotated", "shape", rot.Handle, "replacement", rep.New)
					}
				}
				cancel()
				if err == nil || errors.Is(err, shapes.ErrUnknownShape) || ctx.Err() != nil {
					break
				}
				if attempt >= 10 {
					r.log.Error("could not rotate a shape; remove it by hand (fanoutctl shape rm)", "shape", rot.Handle, "err", err)
					break
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
				}
			}
		}
	}
}
