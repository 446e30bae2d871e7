// Package match routes row changes to the shapes whose where clause they
// match. PLACEHOLDER: routes by table only; being replaced by the real
// matcher (pg_query_go parser, Postgres semantics, equality index).
package match

import (
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
	// New is the new row: nil for delete.
	New fanout.Row
}

// Registry holds the live shapes and their compiled predicates. It is not
// safe for concurrent use: one goroutine (ingest's router) owns it.
type Registry struct {
	shapes map[string]*fanout.Shape
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{shapes: map[string]*fanout.Shape{}} }

// Add compiles s's where clause against s.Schema and adds (or replaces) it.
func (r *Registry) Add(s *fanout.Shape) error {
	r.shapes[s.Handle] = s
	return nil
}

// Remove drops a shape; unknown handles are ignored.
func (r *Registry) Remove(handle string) { delete(r.shapes, handle) }

// Len is the number of shapes.
func (r *Registry) Len() int { return len(r.shapes) }

// Get returns a shape by handle.
func (r *Registry) Get(handle string) (*fanout.Shape, bool) {
	s, ok := r.shapes[handle]
	return s, ok
}

// Route calls emit once for every shape c touches, with the change as that
// shape sees it: projected to its columns, an update that moves the row in
// is an insert, one that moves it out is a delete.
func (r *Registry) Route(c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	for _, s := range r.shapes {
		if s.Table == c.Table {
			emit(s, fanout.Change{Op: c.Op, Row: c.New, Old: c.Old})
		}
	}
}

// ShapesOf calls emit for every shape on table (a truncate touches them all).
func (r *Registry) ShapesOf(table string, emit func(s *fanout.Shape)) {
	for _, s := range r.shapes {
		if s.Table == table {
			emit(s)
		}
	}
}
