package match

import (
	"github.com/fanout/pipeline/fanout"
)

// Route calls emit once for every shape c touches, with the change as that
// shape sees it:
//
//   - insert: an insert of the projected row, if the new row matches.
//   - delete: a delete by the old primary key, if the old row matched. When
//     the old row is unknown or lacks a column the clause reads (REPLICA
//     IDENTITY DEFAULT), every candidate shape gets the delete: deleting a
//     key a shape does not hold is harmless.
//   - update: in before and after: an update (Old holds the old key only if
//     the key changed); moved in: an insert of the whole projected new row;
//     moved out: a delete by the old key. When the old row is unknown the
//     new row decides: matching is an update (an upsert), not matching a
//     delete by key.
//
// Without the full old row (REPLICA IDENTITY DEFAULT) the index cannot rule
// shapes out for updates and deletes, so they go to every shape of the table
// filtering on a non-key column: correct, but costly with many shapes. Set
// REPLICA IDENTITY FULL on shape tables (ingest does when configured).
//
// Rows given to emit may be shared between shapes: emit must not modify
// them. emit must not call back into the registry.
func (r *Registry) Route(c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	t := r.tables[c.Table]
	if t == nil {
		return
	}
	switch c.Op {
	case fanout.OpInsert:
		for _, e := range r.candidates(t, c.New, nil) {
			if r.eval(e, c.New) {
				emit(e.shape, fanout.Change{Op: fanout.OpInsert, Row: e.project(c.New)})
			}
		}
	case fanout.OpDelete:
		var cands []*entry
		if c.Old == nil {
			cands = t.all
		} else {
			cands = r.candidates(t, c.Old, nil)
		}
		for _, e := range cands {
			if !e.pred.covers(c.Old) || r.eval(e, c.Old) {
				emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: e.key(c.Old)})
			}
		}
	case fanout.OpUpdate:
		r.routeUpdate(t, c, emit)
	}
}

func (r *Registry) routeUpdate(t *tableIndex, c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	newRow := withUnchanged(c.New, c.Old)
	cands := t.all // without the old row, any shape may have held it
	if c.Old != nil {
		cands = r.candidates(t, newRow, c.Old)
	}
	for _, e := range cands {
		newIn := r.eval(e, newRow)
		// oldKey is where the row sat: the old key if Old has it (the key
		// may have changed), else the new row's key.
		oldKey, keyChanged := e.key(newRow), false
		if c.Old != nil && e.hasKey(c.Old) {
			oldKey = e.key(c.Old)
			keyChanged = !sameValues(oldKey, e.key(newRow))
		}
		if !e.pred.covers(c.Old) {
			if newIn {
				ch := fanout.Change{Op: fanout.OpUpdate, Row: e.project(newRow)}
				if keyChanged {
					ch.Old = oldKey
				}
				emit(e.shape, ch)
			} else {
				emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: oldKey})
			}
			continue
		}
		oldIn := r.eval(e, c.Old)
		switch {
		case oldIn && newIn:
			ch := fanout.Change{Op: fanout.OpUpdate, Row: e.project(newRow)}
			if keyChanged {
				ch.Old = oldKey
			}
			emit(e.shape, ch)
		case newIn:
			emit(e.shape, fanout.Change{Op: fanout.OpInsert, Row: e.project(newRow)})
		case oldIn:
			emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: oldKey})
		}
	}
}

// candidates collects, without duplicates, the shapes of t that a or b
// (either may be nil) could match, into a list reused by the next call.
func (r *Registry) candidates(t *tableIndex, a, b fanout.Row) []*entry {
	r.visit++
	r.cand = r.cand[:0]
	visit := func(e *entry) {
		if e.mark != r.visit {
			e.mark = r.visit
			r.cand = append(r.cand, e)
		}
	}
	if a != nil {
		t.collect(a, visit)
	}
	if b != nil {
		t.collect(b, visit)
	}
	return r.cand
}

func (r *Registry) eval(e *entry, row fanout.Row) bool {
	r.evals++
	ok, err := e.pred.EvalErr(row)
	if err != nil {
		r.onErr(e.shape, err)
	}
	return ok
}

// withUnchanged fills columns missing from newRow (unchanged TOASTed values
// the decoder could not supply) from old, when old has them.
func withUnchanged(newRow, old fanout.Row) fanout.Row {
	if old == nil {
		return newRow
	}
	var merged fanout.Row
	for k, v := range old {
		if _, ok := newRow[k]; ok {
			continue
		}
		if merged == nil {
			merged = make(fanout.Row, len(newRow)+1)
			for nk, nv := range newRow {
				merged[nk] = nv
			}
		}
		merged[k] = v
	}
	if merged == nil {
		return newRow
	}
	return merged
}

// project keeps the shape's columns (primary key included) of row.
func (e *entry) project(row fanout.Row) fanout.Row {
	if e.proj == nil {
		return row
	}
	out := make(fanout.Row, len(e.proj))
	for _, c := range e.proj {
		if v, ok := row[c]; ok {
			out[c] = v
		}
	}
	return out
}

// key is the primary-key part of row.
func (e *entry) key(row fanout.Row) fanout.Row {
	out := make(fanout.Row, len(e.shape.PrimaryKey))
	for _, c := range e.shape.PrimaryKey {
		if v, ok := row[c]; ok {
			out[c] = v
		}
	}
	return out
}

func (e *entry) hasKey(row fanout.Row) bool {
	for _, c := range e.shape.PrimaryKey {
		if _, ok := row[c]; !ok {
			return false
		}
	}
	return len(e.shape.PrimaryKey) > 0
}

// sameValues compares two rows' text values (Postgres prints equal values of
// one type identically).
func sameValues(a, b fanout.Row) bool {
	if len(a) != len(b) {
		return false
	}
	for k, av := range a {
		bv, ok := b[k]
		if !ok || (av == nil) != (bv == nil) || (av != nil && *av != *bv) {
			return false
		}
	}
	return true
}
