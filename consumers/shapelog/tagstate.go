package shapelog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// TagState is what a client that follows tags holds of a shape with
// subqueries (as @tanstack/electric-db-collection does): each row's key,
// tags and active conditions. A move-out turns the conditions its patterns
// name false and drops the rows no disjunct keeps; a move-in turns them
// true. The consumer keeps one per shape it writes, to put before each
// move-out the deletes of the rows it drops (so a client that ignores
// events ends equal to the query too); Materialize keeps one to apply the
// events itself.
type TagState struct {
	pk        []string
	rows      map[string]*tagRow
	index     []map[string]map[string]struct{} // position -> tag slot -> keys
	disjuncts [][]int                          // each disjunct's positions, from the first tags seen
}

// tagRow is a row held: its key is the map's (rowKey), so a state costs
// about 210 bytes a row with one tag (BenchmarkTagStateMemory).
type tagRow struct {
	tags   []string
	active []bool
}

// NewTagState is an empty state of a shape keyed by pk.
func NewTagState(pk []string) *TagState {
	return &TagState{pk: pk, rows: map[string]*tagRow{}}
}

// Len is the number of rows held.
func (s *TagState) Len() int { return len(s.rows) }

// key is a row's key in the state: its primary key values, each followed
// by a NUL byte (no Postgres text value holds one).
func (s *TagState) key(r fanout.Row) (string, bool) {
	var b strings.Builder
	for _, c := range s.pk {
		v, ok := r[c]
		if !ok || v == nil {
			return "", false
		}
		b.WriteString(*v)
		b.WriteByte(0)
	}
	return b.String(), true
}

// rowKey is the primary key row of state key k.
func (s *TagState) rowKey(k string) fanout.Row {
	out := make(fanout.Row, len(s.pk))
	for _, c := range s.pk {
		i := strings.IndexByte(k, 0)
		v := k[:i]
		out[c] = &v
		k = k[i+1:]
	}
	return out
}

// set sets a row's tags (added to those it has, removed ones taken away)
// and active conditions, as a client does with an insert or update.
func (s *TagState) set(row fanout.Row, tags, removed []string, active []bool) {
	k, ok := s.key(row)
	if !ok {
		return
	}
	r := s.rows[k]
	if r == nil {
		r = &tagRow{}
		s.rows[k] = r
	}
	for _, t := range tags {
		if !contains(r.tags, t) {
			r.tags = append(r.tags, t)
			s.indexTag(k, t, true)
		}
	}
	for _, t := range removed {
		if i := indexOf(r.tags, t); i >= 0 && !contains(tags, t) {
			r.tags = append(r.tags[:i], r.tags[i+1:]...)
			s.indexTag(k, t, false)
		}
	}
	if len(active) > 0 {
		r.active = append(r.active[:0], active...)
	}
	if s.disjuncts == nil && len(tags) > 0 {
		for _, t := range tags {
			var d []int
			for i, slot := range strings.Split(t, "/") {
				if slot != "" {
					d = append(d, i)
				}
			}
			s.disjuncts = append(s.disjuncts, d)
		}
	}
}

func (s *TagState) indexTag(k, tag string, add bool) {
	for pos, slot := range strings.Split(tag, "/") {
		if slot == "" {
			continue
		}
		for len(s.index) <= pos {
			s.index = append(s.index, map[string]map[string]struct{}{})
		}
		set := s.index[pos][slot]
		if add {
			if set == nil {
				set = map[string]struct{}{}
				s.index[pos][slot] = set
			}
			set[k] = struct{}{}
		} else if set != nil {
			delete(set, k)
			if len(set) == 0 {
				delete(s.index[pos], slot)
			}
		}
	}
}

func (s *TagState) drop(k string) {
	r := s.rows[k]
	if r == nil {
		return
	}
	for _, t := range r.tags {
		s.indexTag(k, t, false)
	}
	delete(s.rows, k)
}

// Apply applies one change as the client does. For a move-out it returns
// the deletes of the rows the move drops, in a stable order, for a writer
// to put before the event.
func (s *TagState) Apply(c fanout.Change) (dropped []fanout.Change) {
	switch c.Op {
	case fanout.OpInsert, fanout.OpUpdate:
		if c.Old != nil {
			if ok, has := s.key(c.Old); has {
				if nk, has := s.key(c.Row); has && nk != ok {
					s.drop(ok) // a key change: the old key is gone
				}
			}
		}
		s.set(c.Row, c.Tags, c.RemovedTags, c.Active)
	case fanout.OpDelete:
		if k, ok := s.key(c.Old); ok {
			s.drop(k)
		}
	case fanout.OpTruncate:
		s.rows, s.index = map[string]*tagRow{}, nil
	case fanout.OpMoveIn, fanout.OpMoveOut:
		for _, p := range c.Patterns {
			if p.Pos >= len(s.index) {
				continue
			}
			var keys []string
			for k := range s.index[p.Pos][p.Value] {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				r := s.rows[k]
				if p.Pos < len(r.active) {
					r.active[p.Pos] = c.Op == fanout.OpMoveIn
				}
				if c.Op == fanout.OpMoveOut && !s.visible(r) {
					dropped = append(dropped, fanout.Change{Op: fanout.OpDelete, Old: s.rowKey(k)})
					s.drop(k)
				}
			}
		}
	}
	return dropped
}

// visible reports whether some disjunct has all its conditions active.
func (s *TagState) visible(r *tagRow) bool {
	for _, d := range s.disjuncts {
		all := true
		for _, p := range d {
			all = all && p < len(r.active) && r.active[p]
		}
		if all {
			return true
		}
	}
	return false
}

// Meta is the tags and active conditions held for row's key (nil when
// the row is not held).
func (s *TagState) Meta(row fanout.Row) (tags []string, active []bool) {
	k, ok := s.key(row)
	if !ok {
		return nil, nil
	}
	if r := s.rows[k]; r != nil {
		return r.tags, r.active
	}
	return nil, nil
}

// Has reports whether the row of key values k is held.
func (s *TagState) Has(row fanout.Row) bool {
	k, ok := s.key(row)
	return ok && s.rows[k] != nil
}

func keyRow(pk []string, row fanout.Row) fanout.Row {
	out := make(fanout.Row, len(pk))
	for _, c := range pk {
		out[c] = row[c]
	}
	return out
}

func contains(list []string, s string) bool { return indexOf(list, s) >= 0 }

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// BuildTagState replays what is persisted of shape handle (its current
// generation's base: the complete initial snapshot or a compacted base, if
// any, then every accepted record of its logs after it, readable or not: a
// writer continues from the log's end) into a TagState. It returns the
// position of the last record applied, and whether the state holds the
// snapshot's rows (false while the shape has no complete snapshot: only
// its log's rows are known).
//
// plainExtra lists the keys of rows a client that ignores events holds
// (it applies the row changes only) and the state does not: rows a
// move-out dropped without the deletes a writer puts before it (written
// while the shape had no complete snapshot, so its rows were not known).
// A writer deletes them at the log's end.
func BuildTagState(dir, handle string, pk []string) (st *TagState, last fanout.Position, withSnapshot bool, plainExtra []fanout.Row, err error) {
	st = NewTagState(pk)
	plain := map[string]fanout.Row{}
	apply := func(c fanout.Change) {
		st.Apply(c)
		switch c.Op {
		case fanout.OpInsert, fanout.OpUpdate:
			if c.Old != nil {
				if k, ok := st.key(c.Old); ok {
					delete(plain, k)
				}
			}
			if k, ok := st.key(c.Row); ok {
				plain[k] = keyRow(pk, c.Row)
			}
		case fanout.OpDelete:
			if k, ok := st.key(c.Old); ok {
				delete(plain, k)
			}
		case fanout.OpTruncate:
			clear(plain)
		}
	}
	chain, err := LoadChain(dir, handle)
	if err != nil {
		return nil, last, false, nil, err
	}
	g := chain.Current()
	if g.Base != nil {
		if err := g.Base.EachRowMeta(func(row fanout.Row, tags []string, active []bool) error {
			apply(fanout.Change{Op: fanout.OpInsert, Row: row, Tags: tags, Active: active})
			return nil
		}); err != nil {
			return nil, last, false, nil, err
		}
	}
	entry := func(e LogEntry) error {
		last = e.Position
		if chain.Snapshot != nil && chain.Snapshot.Snapshot.Visible(e.xid) {
			return nil // in the snapshot's rows
		}
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		for _, c := range f.Changes {
			apply(c)
		}
		return nil
	}
	// The readable records through the generations, then what the newest
	// log holds after its readable end.
	end, err := chain.Read(g.LogStart(), func(e LogEntry, _ Cursor) error { return entry(e) })
	if err == nil {
		err = scanAccepted(genLogPath(dir, handle, end.gen), end, entry)
	}
	if err != nil {
		return nil, last, false, nil, err
	}
	var keys []string
	for k := range plain {
		if st.rows[k] == nil {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		plainExtra = append(plainExtra, plain[k])
	}
	return st, last, chain.Snapshot != nil, plainExtra, nil
}

// scanAccepted calls fn for every record of the log at path after from
// that a replay applies (accept.go), readable or not, up to a torn tail.
func scanAccepted(path string, from Cursor, fn func(e LogEntry) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open shape log %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.Seek(from.Offset, io.SeekStart); err != nil {
		return fmt.Errorf("read shape log %s: %w", path, err)
	}
	acc := from.acc
	_, _, err = scanFrames(f, func(off int64, payload []byte) error {
		h, _, err := readRecord(payload)
		if err != nil {
			return fmt.Errorf("shape log %s: record at byte %d: %w", path, from.Offset+off, err)
		}
		if !acc.accept(h.epoch, h.pos) {
			return nil
		}
		return fn(LogEntry{Position: h.pos, Epoch: h.epoch, Last: h.last, Changes: h.changes, xid: h.xid, payload: payload, offset: from.Offset + off, gen: from.gen})
	})
	return err
}
