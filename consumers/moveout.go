package consumers

import (
	"bytes"
	"log/slog"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// moveOuts puts, before each move-out event of a shape with subqueries
// (fanout/moves.go), the deletes of the rows it moves out of the shape, so
// a client that ignores events (a plain ShapeStream, useShape, pglite-sync)
// ends equal to the query too; electric-db-collection applies the deletes
// as any, and the event then finds nothing left to drop. And it writes an
// insert of a row the shape already holds (a row a move-in brought again,
// an update seen while a move-in was read) as an update of the whole row,
// as a client that applies inserts as SQL INSERTs (pglite-sync) needs;
// clients that follow tags merge an insert of a held row the same way. It
// keeps, for each such shape it writes, what a client following tags holds
// (shapelog.TagState): built from the shape's snapshot and log the first
// time, then kept from the fragments this worker writes. One per worker;
// the worker's goroutine only.
//
// A shape whose initial snapshot is not complete yet has only its log's
// rows known: a move-out then deletes those, and once the snapshot is
// complete the state is built again, and the rows of the snapshot a
// move-out dropped meanwhile are deleted at that point (the first fragment
// after it).
type moveOuts struct {
	dir    string
	key    func(handle string) ([]string, bool) // primary key of a shape with subqueries
	log    *slog.Logger
	states map[string]*shapeTags
	m      *metrics
}

type shapeTags struct {
	st        *shapelog.TagState
	last      fanout.Position
	has       bool
	full      bool      // holds the snapshot's rows
	checked   time.Time // when a partial state last looked for the snapshot
	extra     []fanout.Row
	extraDone bool
}

func newMoveOuts(dir string, key func(string) ([]string, bool), log *slog.Logger, m *metrics) *moveOuts {
	return &moveOuts{dir: dir, key: key, log: log, states: map[string]*shapeTags{}, m: m}
}

// reset forgets every state (a batch failed to persist: what they saw may
// not be in the logs); they are built again from the logs when needed.
func (m *moveOuts) reset() { clear(m.states) }

// forget drops a shape's state (the shape was removed).
func (m *moveOuts) forget(handle string) { delete(m.states, handle) }

var moveOutOp = []byte(`"op":"move-out"`)

// mayMoveOut reports whether f holds a move-out event.
func mayMoveOut(f *fanout.Fragment) bool {
	if f.Changes != nil {
		for _, c := range f.Changes {
			if c.Op == fanout.OpMoveOut {
				return true
			}
		}
		return false
	}
	w, err := f.Wire()
	return err == nil && bytes.Contains(w, moveOutOp)
}

// expand returns frags with the deletes in place (a fragment that gains
// some is a new one; the others are the same). A shape whose state cannot
// be built keeps its events alone, and the failure is logged.
func (m *moveOuts) expand(frags []*fanout.Fragment) []*fanout.Fragment {
	// First the states this batch needs, from what is on disk: before any
	// of its fragments, which are not persisted yet, is applied to them.
	for _, f := range frags {
		pk, ok := m.key(f.Shape)
		if !ok {
			continue
		}
		st := m.states[f.Shape]
		if st != nil && !st.full && time.Since(st.checked) > 500*time.Millisecond {
			st.checked = time.Now()
			if snap, err := shapelog.CurrentSnapshot(m.dir, f.Shape); err == nil && snap != nil {
				st = nil // build it again, with the snapshot's rows
			}
		}
		if st != nil {
			continue
		}
		built, last, full, extra, err := shapelog.BuildTagState(m.dir, f.Shape, pk)
		if err != nil {
			m.log.Error("cannot read a shape's log to find the rows it holds; its clients that ignore move events may keep rows a move-out drops, and get inserts of rows they hold", "shape", f.Shape, "err", err)
			continue
		}
		m.states[f.Shape] = &shapeTags{st: built, last: last, has: last != (fanout.Position{}), full: full, checked: time.Now(), extra: extra}
	}
	for i, f := range frags {
		st := m.states[f.Shape]
		if st == nil {
			continue
		}
		if st.has && !f.Position().After(st.last) {
			continue // a duplicate: the log skips it
		}
		if f.Changes == nil {
			w, err := f.Wire()
			if err == nil {
				f, err = fanout.DecodeFragment(w)
			}
			if err != nil {
				m.log.Error("cannot decode a fragment of a shape with subqueries; its move-outs go without deletes", "shape", f.Shape, "err", err)
				continue
			}
		}
		var out []fanout.Change
		grew := false // the fragment changed
		if !st.extraDone && len(st.extra) > 0 {
			for _, k := range st.extra {
				out = append(out, fanout.Change{Op: fanout.OpDelete, Old: k})
			}
			m.m.moveOutDeletes.Add(float64(len(st.extra)))
			grew = true
		}
		st.extraDone = true
		for _, c := range f.Changes {
			if c.Op == fanout.OpInsert && c.Old == nil && st.st.Has(c.Row) {
				c.Op = fanout.OpUpdate // the whole row: Before is unknown
				m.m.insertsAsUpdates.Inc()
				grew = true
			}
			dropped := st.st.Apply(c)
			if len(dropped) > 0 {
				out = append(out, dropped...)
				m.m.moveOutDeletes.Add(float64(len(dropped)))
				grew = true
			}
			out = append(out, c)
		}
		st.last, st.has = f.Position(), true
		if grew {
			frags[i] = withChanges(f, out)
		}
	}
	return frags
}

// withChanges is a copy of f holding changes (encoded anew).
func withChanges(f *fanout.Fragment, changes []fanout.Change) *fanout.Fragment {
	return &fanout.Fragment{
		Version: f.Version, Shape: f.Shape, Xid: f.Xid, CommitLSN: f.CommitLSN, EndLSN: f.EndLSN,
		CommitTime: f.CommitTime, Seq: f.Seq, Last: f.Last, Changes: changes,
		OpensWindow: f.OpensWindow, ClosesWindows: f.ClosesWindows,
	}
}
