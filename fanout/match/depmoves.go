package match

import (
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// What the tuples entering or leaving a subquery's result do to the shapes
// that read it (see fanout/moves.go for how they travel):
//
//   - IN (subquery), a tuple entering: rows with that value move in. The
//     shape gets a move-in event, the tuple is pending until ingest has
//     read the rows (MoveIn, MoveInRows), and meanwhile an update of a row
//     that had a pending value is routed as an insert of the whole row (its
//     client does not hold the row yet).
//   - IN (subquery), a tuple leaving: a move-out event with the tuple's hash
//     at the subquery's positions.
//   - NOT IN (subquery), a tuple entering: rows whose value might equal it
//     are no longer TRUE: a move-out of its hash and of the hashes of the
//     tuple with any elements NULL (a NULL on the left side makes NOT IN
//     NULL as soon as the result is not empty). Leaving: a move-in of the
//     same tuples (the read decides which rows are TRUE now).
//   - A tuple with a NULL element entering or leaving a NOT IN result
//     changes the truth of rows that no pattern names: the shape is rotated.
//     IN ignores such tuples (they never make IN TRUE).

// subqueryMoves is where a subquery stands in a shape's clause.
type subqueryMoves struct {
	positions []int
	negated   bool
}

// MoveIn asks for the rows of a shape that a move-in brings: the rows whose
// left side of Sub is one of Tuples (tuple IDs, possibly with NULL elements
// for NOT IN) and that match the shape's clause now.
type MoveIn struct {
	Handle  string
	Sub     *Subquery
	Tuples  []string
	Negated bool
	// Xid and CommitLSN are the transaction whose change moved the values.
	Xid       uint32
	CommitLSN uint64
}

// TakeMoveIns returns the move-ins asked since the last call.
func (r *Registry) TakeMoveIns() []MoveIn {
	out := r.moveIns
	r.moveIns = nil
	return out
}

// positionsOf caches where d's subquery stands in e's clause.
func (e *entry) positionsOf(d *depState) subqueryMoves {
	if m, ok := e.moves[d.sub.ID]; ok {
		return m
	}
	pos, neg := e.pred.SubqueryPositions(d.sub)
	if e.moves == nil {
		e.moves = map[string]subqueryMoves{}
	}
	m := subqueryMoves{positions: pos, negated: neg}
	e.moves[d.sub.ID] = m
	return m
}

// moveShapes turns what entered or left d's result into the index's
// postings and the moves of the routed shapes reading d.
func (r *Registry) moveShapes(d *depState, m depMoves, emit func(s *fanout.Shape, ch fanout.Change)) {
	for _, e := range d.indexed {
		for _, t := range m.entered {
			r.addSubPosting(e, t)
		}
		for _, t := range m.left {
			r.removeSubPosting(e, t)
		}
	}
	arity := d.sub.Arity()
	for _, e := range d.shapes {
		if !e.routed {
			continue
		}
		sm := e.positionsOf(d)
		var outs, ins []string
		rotate := false
		for _, t := range m.entered {
			switch {
			case hasNullElement(t, arity):
				rotate = rotate || sm.negated
			case sm.negated:
				outs = append(outs, nullVariants(t, arity)...)
			default:
				ins = append(ins, t)
			}
		}
		for _, t := range m.left {
			switch {
			case hasNullElement(t, arity):
				rotate = rotate || sm.negated
			case sm.negated:
				ins = append(ins, nullVariants(t, arity)...)
			default:
				outs = append(outs, t)
			}
		}
		if rotate {
			r.rotate(e.shape.Handle, fmt.Sprintf("a row with a NULL in its selected columns entered or left the result of the NOT IN subquery %s: the rows whose condition that changes cannot be named by a move", d.sub.SQL))
			continue
		}
		if len(outs) > 0 {
			emit(e.shape, fanout.Change{Op: fanout.OpMoveOut, Patterns: patterns(e.shape.Handle, sm.positions, outs)})
		}
		if len(ins) > 0 {
			emit(e.shape, fanout.Change{Op: fanout.OpMoveIn, Patterns: patterns(e.shape.Handle, sm.positions, ins)})
			if e.pending == nil {
				e.pending = map[string]map[string]int{}
			}
			p := e.pending[d.sub.ID]
			if p == nil {
				p = map[string]int{}
				e.pending[d.sub.ID] = p
			}
			for _, t := range ins {
				p[t]++
			}
			r.moveIns = append(r.moveIns, MoveIn{Handle: e.shape.Handle, Sub: d.sub, Tuples: ins, Negated: sm.negated, Xid: r.curXid, CommitLSN: r.curLSN})
		}
	}
}

// patterns are the (position, hash) pairs of tuples at positions.
func patterns(handle string, positions []int, tuples []string) []fanout.Pattern {
	out := make([]fanout.Pattern, 0, len(positions)*len(tuples))
	for _, t := range tuples {
		h := TagHash(handle, t)
		for _, p := range positions {
			out = append(out, fanout.Pattern{Pos: p, Value: h})
		}
	}
	return out
}

// nullVariants is tuple t (no NULL element) and t with every non-empty set
// of its elements NULL: the left sides NOT IN turns from TRUE to NULL when
// t enters a result.
func nullVariants(t string, n int) []string {
	if n == 1 {
		return []string{t, nullElement}
	}
	parts, _ := tupleElements(t, n)
	out := make([]string, 0, 1<<n)
	for mask := 0; mask < 1<<n; mask++ {
		var k tupleKey
		for i, p := range parts {
			if mask&(1<<i) != 0 {
				k.addNull()
			} else {
				k.parts, k.isNul = append(k.parts, p), append(k.isNul, false)
			}
		}
		out = append(out, k.id())
	}
	return out
}

// indexBySubquery indexes e, which has no equality conjunct, by the values
// of its first top-level `col IN (subquery)`: from now on e is a candidate
// only for rows whose col holds one of them.
func (r *Registry) indexBySubquery(t *tableIndex, e *entry) {
	sc := e.pred.subConjs[0]
	d := r.deps[sc.sub.ID]
	if d == nil {
		return
	}
	// Off the scan list, where insert put it.
	last := t.scan[len(t.scan)-1]
	t.scan[e.scanPos], last.scanPos = last, e.scanPos
	t.scan[len(t.scan)-1] = nil
	t.scan = t.scan[:len(t.scan)-1]
	e.scanPos = -1
	e.col = t.column(sc.col, sc.sub.lkinds[0], sc.sub.doms[0])
	e.col.n++
	e.subIdx = d
	e.subPos = map[indexKey]int{}
	d.indexed = append(d.indexed, e)
	d.result.Each(func(id string) { r.addSubPosting(e, id) })
}

// tupleIndexKey is the index key of a one-column tuple; false for NULL.
func tupleIndexKey(d domain, id string) (indexKey, bool) {
	if id == nullElement {
		return indexKey{}, false
	}
	switch d {
	case dInt, dBool, dTime:
		i, err := strconv.ParseInt(id, 10, 64)
		return indexKey{i: i}, err == nil
	}
	return indexKey{s: id}, true
}

func (r *Registry) addSubPosting(e *entry, id string) {
	k, ok := tupleIndexKey(e.col.dom, id)
	if !ok {
		return
	}
	if _, dup := e.subPos[k]; dup {
		return
	}
	e.subPos[k] = len(e.keys)
	e.keys = append(e.keys, posting{key: k, slot: e.col.add(k, e)})
}

func (r *Registry) removeSubPosting(e *entry, id string) {
	k, ok := tupleIndexKey(e.col.dom, id)
	if !ok {
		return
	}
	i, ok := e.subPos[k]
	if !ok {
		return
	}
	e.col.unlink(e.keys[i])
	last := len(e.keys) - 1
	if i != last {
		e.keys[i] = e.keys[last]
		e.subPos[e.keys[i].key] = i
	}
	e.keys = e.keys[:last]
	delete(e.subPos, k)
}

// MoveInRows is the move-in of rows read for shape handle (the rows of its
// table, every column): an insert with MoveIn set, tags and active
// conditions for each row its clause matches now, with the results as they
// stand. The caller places them where the stream has passed every
// transaction the read saw.
func (r *Registry) MoveInRows(handle string, rows []fanout.Row) []fanout.Change {
	e := r.shapes[handle]
	if e == nil || !e.routed {
		return nil
	}
	var out []fanout.Change
	for _, row := range rows {
		ok, err := e.pred.EvalWith(row, r)
		if err != nil {
			r.onErr(e.shape, err)
		}
		if !ok {
			continue
		}
		ch := fanout.Change{Op: fanout.OpInsert, Row: e.project(row), MoveIn: true}
		r.decorate(e, &ch, row, nil)
		out = append(out, ch)
	}
	return out
}

// MoveInDone forgets tuples of subquery sub pending for shape handle:
// their rows are placed.
func (r *Registry) MoveInDone(handle string, sub *Subquery, tuples []string) {
	e := r.shapes[handle]
	if e == nil || e.pending == nil {
		return
	}
	p := e.pending[sub.ID]
	for _, t := range tuples {
		if p[t]--; p[t] <= 0 {
			delete(p, t)
		}
	}
	if len(p) == 0 {
		delete(e.pending, sub.ID)
	}
}

// decorate adds a row message's tags and active conditions (and for an
// update the tags the old row had that the new one has not) for a shape
// with subqueries.
func (r *Registry) decorate(e *entry, ch *fanout.Change, row, old fanout.Row) {
	if e.pred == nil || e.pred.plan == nil {
		return
	}
	ch.Tags = e.pred.Tags(e.shape.Handle, row)
	ch.Active = e.pred.Active(row, r)
	if old == nil {
		return
	}
	for _, s := range e.pred.subs {
		for _, c := range s.Left {
			if _, ok := old[c]; !ok {
				return // the old row's values are unknown
			}
		}
	}
	for _, t := range e.pred.Tags(e.shape.Handle, old) {
		if !slices.Contains(ch.Tags, t) {
			ch.RemovedTags = append(ch.RemovedTags, t)
		}
	}
}

// heldPending reports whether the old row's left side of some subquery is
// a value whose move-in rows are not placed yet: its client may not hold
// the row, so an update of it must carry the whole row. An old row that is
// unknown counts as pending while any move-in is.
func (e *entry) heldPending(old fanout.Row) bool {
	if len(e.pending) == 0 {
		return false
	}
	if old == nil {
		return true
	}
	for id, tuples := range e.pending {
		for _, s := range e.pred.subs {
			if s.ID != id {
				continue
			}
			t, _, _ := s.LeftTuple(old)
			if tuples[t] > 0 {
				return true
			}
		}
	}
	return false
}

// MoveInSQL is the condition that narrows a move-in's read to the rows
// whose left side is one of tuples, with its arguments ($first, $first+1,
// ...: Postgres array literals of the left columns' types). The read
// evaluates the shape's whole clause too; this only keeps it small, and
// the registry decides membership (MoveInRows). ok is false when no value
// narrows it (the read then takes the whole clause).
func (s *Subquery) MoveInSQL(tuples []string, first int, leftTypes []string) (cond string, args []string, ok bool) {
	n := s.Arity()
	if n != 1 {
		return "", nil, false
	}
	var vals []string
	null := false
	for _, t := range tuples {
		if t == nullElement {
			null = true
			continue
		}
		if v, ok := sqlLiteral(s.doms[0], s.lkinds[0], t); ok {
			vals = append(vals, v)
		}
	}
	col := quoteIdent(s.Left[0])
	var parts []string
	if len(vals) > 0 {
		parts = append(parts, fmt.Sprintf("%s = ANY($%d::%s[])", col, first, leftTypes[0]))
		args = append(args, arrayLiteral(vals))
	}
	if null {
		parts = append(parts, col+" IS NULL")
	}
	if len(parts) == 0 {
		return "false", nil, true
	}
	return "(" + strings.Join(parts, " OR ") + ")", args, true
}

// sqlLiteral renders a tuple element (canonical text in domain d) as text
// a column of kind k reads; false when no value of k can equal it.
func sqlLiteral(d domain, k kind, canonical string) (string, bool) {
	switch d {
	case dInt:
		return canonical, true
	case dBool:
		return map[string]string{"0": "false", "1": "true"}[canonical], true
	case dNumeric:
		var r big.Rat
		if _, ok := r.SetString(canonical); !ok {
			return canonical, true // NaN, Infinity
		}
		if isInt(k) && !r.IsInt() {
			return "", false
		}
		return exactDecimal(&r), true
	case dFloat:
		switch canonical {
		case "+Inf":
			return "Infinity", true
		case "-Inf":
			return "-Infinity", true
		}
		return canonical, true
	case dTime:
		us, err := strconv.ParseInt(canonical, 10, 64)
		if err != nil {
			return "", false
		}
		switch k {
		case kDate:
			return formatDate(us), true
		case kTimestamp:
			return formatTimestamp(us, false), true
		}
		return formatTimestamp(us, true), true
	}
	return canonical, true
}

// exactDecimal prints a rational whose denominator is a product of 2s and
// 5s (every numeric read from text) exactly.
func exactDecimal(r *big.Rat) string {
	den := new(big.Int).Set(r.Denom())
	digits := func(p int64) int {
		n, q, m := 0, new(big.Int), new(big.Int)
		for den.Cmp(big.NewInt(1)) > 0 {
			q.QuoRem(den, big.NewInt(p), m)
			if m.Sign() != 0 {
				break
			}
			den.Set(q)
			n++
		}
		return n
	}
	return r.FloatString(max(digits(2), digits(5)))
}

// arrayLiteral is a Postgres array literal of text elements.
func arrayLiteral(vals []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, c := range v {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}
