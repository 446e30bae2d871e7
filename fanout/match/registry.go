// Package match routes row changes to the shapes whose where clause they
// match. Where clauses are parsed by the Postgres parser (pg_query_go),
// type-checked against the table's schema, and evaluated with Postgres's
// semantics (three-valued logic, its implicit casts, byte-order text as
// under the C collation). An equality index keeps routing cost independent
// of the number of shapes that filter on `col = constant`.
package match

import (
	"fmt"
	"log/slog"

	"github.com/fanout/pipeline/fanout"
)

// RowChange is one decoded change of one table row.
type RowChange struct {
	// Table is schema-qualified ("public.items").
	Table string
	// Op is insert, update or delete (truncate is routed with ShapesOf).
	Op fanout.Op
	// Old is the old row: nil for insert; for update and delete the full old
	// row under REPLICA IDENTITY FULL, else only its key columns or nil.
	Old fanout.Row
	// OldFull says Old is the whole old row (pgoutput's 'O' tuple, REPLICA
	// IDENTITY FULL), not just its key: only then does routing fill
	// fanout.Change.Before.
	OldFull bool
	// New is the new row: nil for delete. A column missing from the map
	// (as opposed to present with a nil value, SQL NULL) is unknown.
	New fanout.Row
}

// Registry holds the live shapes, their compiled predicates and the
// equality index. It is not safe for concurrent use: one goroutine (ingest's
// router) owns it.
type Registry struct {
	shapes map[string]*entry
	tables map[string]*tableIndex
	onErr  func(s *fanout.Shape, err error)

	visit    uint64      // generation of the current Route call, for entry.mark
	cand     []candidate // reused candidate list
	examined int         // shapes decided so far, by the index or by evaluation (tests check the index with it)

	// Subqueries (deps.go, depmoves.go).
	deps      map[string]*depState   // by subquery ID
	depTables map[string][]*depState // by table read, children first
	waiting   map[string]*entry      // shapes waiting for their subqueries' results
	loads     []*depState            // results to load (TakeLoads)
	readyNow  []string               // shapes routed since the last TakeReady
	moveIns   []MoveIn               // move-ins asked since the last TakeMoveIns
	rotations []Rotation
	curXid    uint32 // the transaction being routed (BeginTxn)
	curLSN    uint64
}

// Option configures a Registry.
type Option func(*Registry)

// WithEvalErrors sets what happens when a row value cannot be read as its
// column's type (the table's schema changed under a shape, or a decoder
// bug): the value counts as NULL for that evaluation; and when evaluating
// the clause fails on the row as it would in Postgres (overflow, division by
// zero, a cast that cannot read a value): the row does not match. By
// default the error is logged with slog.Default at warn level.
func WithEvalErrors(f func(s *fanout.Shape, err error)) Option {
	return func(r *Registry) { r.onErr = f }
}

// NewRegistry returns an empty registry.
func NewRegistry(opts ...Option) *Registry {
	r := &Registry{shapes: map[string]*entry{}, tables: map[string]*tableIndex{},
		deps: map[string]*depState{}, depTables: map[string][]*depState{}, waiting: map[string]*entry{}}
	r.onErr = func(s *fanout.Shape, err error) {
		slog.Default().Warn("shape where clause could not be evaluated on a row (an unreadable value counts as NULL; an error Postgres would raise, such as division by zero, makes the row not match); check the clause against the table's data",
			"shape", s.Handle, "table", s.Table, "err", err)
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Add compiles s's where clause against s.Schema (and s.Tables for its
// subqueries) and adds s, replacing a shape of the same handle. On error
// the registry is unchanged. The registry keeps s, and may replace its
// Table, PrimaryKey and Schema with equal values shared with the table's
// other shapes.
//
// A shape with subqueries is routed only once their results are known
// (deps.go): until then it waits (IsWaiting), and TakeLoads lists the
// results to load.
func (r *Registry) Add(s *fanout.Shape) error {
	pred, err := CompileShape(s)
	if err != nil {
		return fmt.Errorf("shape %s on %s: %w", s.Handle, s.Table, err)
	}
	if s.Table == "" {
		return fmt.Errorf("shape %s has no table", s.Handle)
	}
	r.Remove(s.Handle)
	e := &entry{shape: s, pred: pred}
	if len(s.Columns) > 0 {
		e.proj = append(e.proj, s.PrimaryKey...)
		for _, c := range s.Columns {
			if !contains(e.proj, c) {
				e.proj = append(e.proj, c)
			}
		}
	}
	r.shapes[s.Handle] = e
	ready := true
	for _, sub := range pred.Subqueries() {
		d := r.addDep(sub)
		d.shapes = append(d.shapes, e)
		e.deps = append(e.deps, d)
		ready = ready && d.ready()
	}
	if !ready {
		r.waiting[s.Handle] = e
		return nil
	}
	r.route(e)
	return nil
}

// route puts e in its table's index: from now on changes reach it.
func (r *Registry) route(e *entry) {
	s := e.shape
	t := r.tables[s.Table]
	if t == nil {
		t = &tableIndex{}
		r.tables[s.Table] = t
	}
	t.share(s)
	t.insert(e)
	if e.col == nil && e.pred != nil && len(e.pred.subConjs) > 0 {
		r.indexBySubquery(t, e)
	}
	e.routed = true
}

// unroute takes e out of its table's index, if it is in it.
func (r *Registry) unroute(e *entry) {
	if !e.routed {
		return
	}
	t := r.tables[e.shape.Table]
	t.remove(e)
	if len(t.all) == 0 {
		delete(r.tables, e.shape.Table)
	}
	e.routed = false
}

// Remove drops a shape; unknown handles are ignored.
func (r *Registry) Remove(handle string) {
	e, ok := r.shapes[handle]
	if !ok {
		return
	}
	delete(r.shapes, handle)
	delete(r.waiting, handle)
	r.unroute(e)
	for _, d := range e.deps {
		d.shapes = deleteEntry(d.shapes, e)
		d.indexed = deleteEntry(d.indexed, e)
		r.dropDep(d)
	}
	e.deps = nil
}

func deleteEntry(list []*entry, e *entry) []*entry {
	for i, x := range list {
		if x == e {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			return list[:len(list)-1]
		}
	}
	return list
}

// Len is the number of shapes.
func (r *Registry) Len() int { return len(r.shapes) }

// Get returns a shape by handle.
func (r *Registry) Get(handle string) (*fanout.Shape, bool) {
	e, ok := r.shapes[handle]
	if !ok {
		return nil, false
	}
	return e.shape, true
}

// ShapesOf calls emit for every shape on table (a truncate touches them all).
func (r *Registry) ShapesOf(table string, emit func(s *fanout.Shape)) {
	t := r.tables[table]
	if t == nil {
		return
	}
	for _, e := range t.all {
		emit(e.shape)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
