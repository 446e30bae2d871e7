package match

import (
	"slices"

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
// When c.OldFull, changes also carry Before (see fanout.Change): the whole
// projected old row on deletes and moves out, the old key and changed
// columns on updates (see beforeRow). Inserts and changes without the full
// old row cost nothing more.
//
// Without the full old row (REPLICA IDENTITY DEFAULT) the index cannot rule
// shapes out for updates and deletes, so they go to every shape of the table
// filtering on a non-key column: correct, but costly with many shapes. Set
// REPLICA IDENTITY FULL on shape tables (ingest does when configured).
//
// Rows given to emit may be shared between shapes: emit must not modify
// them. emit must not call back into the registry.
func (r *Registry) Route(c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	if ds := r.depTables[c.Table]; len(ds) > 0 {
		r.routeDeps(ds, c, emit) // first: the table's own shapes see the new results
	}
	t := r.tables[c.Table]
	if t == nil {
		return
	}
	switch c.Op {
	case fanout.OpInsert:
		r.routeInsert(t, c.New, emit)
	case fanout.OpDelete:
		r.routeDelete(t, c.Old, c.OldFull, emit)
	case fanout.OpUpdate:
		r.routeUpdate(t, c, emit)
	}
}

func (r *Registry) routeInsert(t *tableIndex, row fanout.Row, emit func(s *fanout.Shape, ch fanout.Change)) {
	for _, cd := range r.candidates(t, row, nil) {
		if r.matches(cd, row) {
			ch := fanout.Change{Op: fanout.OpInsert, Row: cd.project(row)}
			if !cd.known { // known: no predicate, so no subquery either
				r.decorate(cd.entry, &ch, row, nil)
			}
			emit(cd.shape, ch)
		}
	}
}

// routeDelete routes a delete of old; full: old is the whole old row.
func (r *Registry) routeDelete(t *tableIndex, old fanout.Row, full bool, emit func(s *fanout.Shape, ch fanout.Change)) {
	if old == nil {
		for _, e := range t.all {
			emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: e.key(old)})
		}
		return
	}
	for _, cd := range r.candidates(t, old, nil) {
		if !cd.covers(old) || r.matches(cd, old) {
			ch := fanout.Change{Op: fanout.OpDelete, Old: cd.key(old)}
			if full {
				ch.Before = cd.project(old)
			}
			emit(cd.shape, ch)
		}
	}
}

func (r *Registry) routeUpdate(t *tableIndex, c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	newRow := withUnchanged(c.New, c.Old)
	if c.Old == nil { // without the old row, any shape may have held it
		for _, e := range t.all {
			r.updateShape(e, c.Old, newRow, nil, emit)
		}
		return
	}
	var before *beforeRow
	if c.OldFull {
		before = &beforeRow{old: c.Old, new: newRow}
	}
	for _, cd := range r.candidates(t, newRow, c.Old) {
		r.updateShape(cd.entry, c.Old, newRow, before, emit)
	}
}

// updateShape routes an update of old (nil when unknown) to newRow to e's
// shape: an update, a move in or a move out. before is nil unless old is
// the whole old row.
func (r *Registry) updateShape(e *entry, old, newRow fanout.Row, before *beforeRow, emit func(s *fanout.Shape, ch fanout.Change)) {
	newIn := r.eval(e, newRow)
	// oldKey is where the row sat: the old key if old has it (the key may
	// have changed), else the new row's key.
	oldKey, keyChanged := e.key(newRow), false
	if old != nil && e.hasKey(old) {
		oldKey = e.key(old)
		keyChanged = !sameValues(oldKey, e.key(newRow))
	}
	if e.heldPending(old) {
		// Its client may not hold the row yet (a move-in of its value is
		// not placed): the whole row, as an insert, whatever it held.
		if keyChanged {
			emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: oldKey})
		}
		if newIn {
			ch := fanout.Change{Op: fanout.OpInsert, Row: e.project(newRow)}
			// The client may hold the row with the old row's tags: say
			// which go (an insert of a held row adds its tags to them).
			r.decorate(e, &ch, newRow, old)
			emit(e.shape, ch)
		} else if !keyChanged {
			emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: oldKey})
		}
		return
	}
	if !e.covers(old) {
		if newIn {
			ch := fanout.Change{Op: fanout.OpUpdate, Row: e.project(newRow)}
			if keyChanged {
				ch.Old = oldKey
			}
			r.decorate(e, &ch, newRow, old)
			emit(e.shape, ch)
		} else {
			emit(e.shape, fanout.Change{Op: fanout.OpDelete, Old: oldKey})
		}
		return
	}
	oldIn := r.eval(e, old)
	switch {
	case oldIn && newIn:
		ch := fanout.Change{Op: fanout.OpUpdate, Row: e.project(newRow), Before: before.forUpdate(e)}
		if keyChanged {
			ch.Old = oldKey
		}
		r.decorate(e, &ch, newRow, old)
		emit(e.shape, ch)
	case newIn:
		ch := fanout.Change{Op: fanout.OpInsert, Row: e.project(newRow)}
		r.decorate(e, &ch, newRow, nil)
		emit(e.shape, ch)
	case oldIn:
		ch := fanout.Change{Op: fanout.OpDelete, Old: oldKey}
		if before != nil {
			ch.Before = e.project(old)
		}
		emit(e.shape, ch)
	}
}

// beforeRow is what one update's Change.Before is made of, for every shape
// it reaches: which columns changed is worked out once, on the first shape
// that needs it, and the Before of shapes keeping every column is built
// once and shared (emit must not modify rows).
type beforeRow struct {
	old, new fanout.Row // the whole old row; the new one, unchanged TOASTed values filled in
	computed bool
	// complete: old has every column of new (else changed is unknown and no
	// shape gets a Before).
	complete bool
	changed  []string // columns whose value the update changed
	shared   fanout.Row
	sharedPK []string // the primary key shared was built with
}

// forUpdate is Before for e's shape of an update that stays in it: the old
// primary key plus the old values of e's columns the update changed; nil
// when b is nil or incomplete.
func (b *beforeRow) forUpdate(e *entry) fanout.Row {
	if b == nil {
		return nil
	}
	if !b.computed {
		b.computed, b.complete = true, true
		for c, nv := range b.new {
			ov, ok := b.old[c]
			if !ok {
				b.complete = false
				return nil
			}
			if !sameValue(ov, nv) {
				b.changed = append(b.changed, c)
			}
		}
	}
	if !b.complete {
		return nil
	}
	pk := e.shape.PrimaryKey
	if e.proj != nil {
		return b.take(pk, e.proj)
	}
	if b.shared == nil || !slices.Equal(b.sharedPK, pk) {
		b.shared, b.sharedPK = b.take(pk, nil), pk
	}
	return b.shared
}

// take is the old values of pk and of the changed columns in proj (nil:
// every column).
func (b *beforeRow) take(pk, proj []string) fanout.Row {
	out := make(fanout.Row, len(pk)+len(b.changed))
	for _, c := range pk {
		if v, ok := b.old[c]; ok {
			out[c] = v
		}
	}
	for _, c := range b.changed {
		if proj == nil || contains(proj, c) {
			out[c] = b.old[c]
		}
	}
	return out
}

// candidate is a shape a row could match. known: the index has already
// decided that it matches (see tableIndex.collect), so row has its column.
// whole: the shape keeps every column. A candidate found in a slot that
// decides it is made without reading the entry (see keySlot), and routing
// it must not read it either: shape, known and whole are all it needs.
type candidate struct {
	*entry
	shape *fanout.Shape
	known bool
	whole bool
}

// candidate is e as a candidate; known: e's bucket holds the row's value.
func (e *entry) candidate(known bool) candidate {
	return candidate{entry: e, shape: e.shape, known: known && e.pred == nil, whole: e.proj == nil}
}

// candidates collects, without duplicates, the shapes of t that a or b
// (either may be nil) could match, into a list reused by the next call.
// known is kept only for one row: with two it would not say which matched.
// A shape that cannot come twice is not marked, which spares reading its
// entry when its slot decides it.
func (r *Registry) candidates(t *tableIndex, a, b fanout.Row) []candidate {
	r.visit++
	r.cand = r.cand[:0]
	visit := func(cd candidate, once bool) {
		if b != nil {
			cd.known, once = false, false
		}
		if !once {
			if cd.mark == r.visit {
				return
			}
			cd.mark = r.visit
		}
		r.cand = append(r.cand, cd)
	}
	if a != nil {
		t.collect(a, visit)
	}
	if b != nil {
		t.collect(b, visit)
	}
	return r.cand
}

// matches reports whether cd's shape matches row, from the index when it knows.
func (r *Registry) matches(cd candidate, row fanout.Row) bool {
	if cd.known {
		r.examined++
		return true
	}
	return r.eval(cd.entry, row)
}

// covers reports whether row holds every column cd's where clause reads.
func (cd candidate) covers(row fanout.Row) bool {
	return cd.known || cd.entry.covers(row)
}

// project keeps the shape's columns (primary key included) of row.
func (cd candidate) project(row fanout.Row) fanout.Row {
	if cd.whole {
		return row
	}
	return cd.entry.project(row)
}

// key is the primary-key part of row.
func (cd candidate) key(row fanout.Row) fanout.Row {
	return keyOf(cd.shape.PrimaryKey, row)
}

// eval evaluates e's where clause on row.
func (r *Registry) eval(e *entry, row fanout.Row) bool {
	r.examined++
	var ok bool
	var err error
	if e.pred == nil {
		ok, err = e.decide(row)
	} else {
		ok, err = e.pred.EvalWith(row, r)
	}
	if err != nil {
		r.onErr(e.shape, err)
	}
	return ok
}

// covers reports whether row holds every column e's where clause reads, so
// that evaluating it gives the real answer.
func (e *entry) covers(row fanout.Row) bool {
	if e.pred != nil {
		return e.pred.covers(row)
	}
	_, ok := row[e.col.col]
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
func (e *entry) key(row fanout.Row) fanout.Row { return keyOf(e.shape.PrimaryKey, row) }

func keyOf(pk []string, row fanout.Row) fanout.Row {
	out := make(fanout.Row, len(pk))
	for _, c := range pk {
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
		if !ok || !sameValue(av, bv) {
			return false
		}
	}
	return true
}

// sameValue compares two text values, nil being NULL.
func sameValue(a, b fanout.Value) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}
