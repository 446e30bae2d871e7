package match

import (
	"fmt"
	"slices"

	"github.com/fanout/pipeline/fanout"
)

// The equality index: for each table, the shapes that have a top-level
// `col = constant` (or `col IN (...)`) conjunct sit in a bucket keyed by
// (column, value); the rest sit on the table's scan list. A row change
// evaluates only the shapes in the buckets of its own values plus the scan
// list, so the cost of equality filters does not grow with their number.
// A shape whose whole where clause is one such equality (the common case,
// `owner = 7`) keeps no compiled predicate: finding it in its value's bucket
// is the answer, which saves its memory and, at hundreds of thousands of
// shapes, the cache misses of evaluating it.

// tableIndex holds the shapes of one table.
type tableIndex struct {
	all  []*entry // every shape of the table (for truncate and unknown old rows)
	scan []*entry // shapes without an equality conjunct
	cols []*columnIndex

	// What the table's shapes have in common, kept once: at hundreds of
	// thousands of shapes a copy of the schema per shape would be most of
	// the registry's memory.
	table  string
	schema []fanout.Column
	pk     []string
}

// share points s's table name, key and schema at the table's shared copies
// when they are equal, and makes s's the shared ones when the table has none
// yet or they changed (a shape added after a schema change).
func (t *tableIndex) share(s *fanout.Shape) {
	if t.table == "" {
		t.table = s.Table
	}
	s.Table = t.table
	if slices.EqualFunc(s.Schema, t.schema, sameColumn) {
		s.Schema = t.schema
	} else {
		t.schema = s.Schema
	}
	if slices.Equal(s.PrimaryKey, t.pk) {
		s.PrimaryKey = t.pk
	} else {
		t.pk = s.PrimaryKey
	}
}

// columnIndex is the buckets of one column compared in one domain.
// Integer-like domains key their buckets by the value itself: no string to
// hash or to follow when comparing keys, and a smaller map slot.
type columnIndex struct {
	col   string
	kind  kind
	dom   domain
	ints  shapesByKey[int64]  // dInt, dBool, dTime
	texts shapesByKey[string] // the other domains
	n     int
}

func newColumnIndex(col string, k kind, d domain) *columnIndex {
	return &columnIndex{col: col, kind: k, dom: d, ints: newShapesByKey(newIntKeyTable()), texts: newShapesByKey(newTextKeyTable())}
}

func (ci *columnIndex) intKeyed() bool { return ci.dom == dInt || ci.dom == dBool || ci.dom == dTime }

// add puts e in k's bucket and returns its position there.
func (ci *columnIndex) add(k indexKey, e *entry) int {
	if ci.intKeyed() {
		return ci.ints.add(k.i, e)
	}
	return ci.texts.add(k.s, e)
}

// removeAt takes position i out of k's bucket, moving the bucket's last
// shape into it; it returns the moved shape.
func (ci *columnIndex) removeAt(k indexKey, i int) *entry {
	if ci.intKeyed() {
		return ci.ints.removeAt(k.i, i)
	}
	return ci.texts.removeAt(k.s, i)
}

// visit visits the shapes of k's bucket, decided by the index when their
// where clause is that one equality.
func (ci *columnIndex) visit(k indexKey, visit func(cd candidate, once bool)) {
	if ci.intKeyed() {
		ci.ints.each(k.i, visit)
	} else {
		ci.texts.each(k.s, visit)
	}
}

// visitAll visits every shape indexed on ci, undecided.
func (ci *columnIndex) visitAll(visit func(cd candidate, once bool)) {
	ci.ints.all(visit)
	ci.texts.all(visit)
}

// shapesByKey is the buckets of one column index. Most keys have one shape:
// it sits in first, in the key's slot itself (see keyTable), which saves
// memory and cache misses per lookup. The other shapes of a key that
// several shapes share sit in more, positions 1, 2, ... of its bucket.
type shapesByKey[K comparable] struct {
	first *keyTable[K]
	more  map[K][]*entry
}

func newShapesByKey[K comparable](first keyTable[K]) shapesByKey[K] {
	return shapesByKey[K]{first: &first, more: map[K][]*entry{}}
}

func (m shapesByKey[K]) add(k K, e *entry) int {
	if m.first.find(k) == nil {
		m.first.put(k, e)
		return 0
	}
	m.more[k] = append(m.more[k], e)
	return len(m.more[k])
}

func (m shapesByKey[K]) removeAt(k K, i int) *entry {
	more := m.more[k]
	if len(more) == 0 {
		moved := m.first.find(k).e
		m.first.delete(k)
		return moved
	}
	moved := more[len(more)-1]
	if i == 0 {
		m.first.put(k, moved)
	} else {
		more[i-1] = moved
	}
	more[len(more)-1] = nil
	if more = more[:len(more)-1]; len(more) == 0 {
		delete(m.more, k)
	} else {
		m.more[k] = more
	}
	return moved
}

// each visits the shapes of k's bucket. A shape the slot decides is
// visited without reading its entry.
func (m shapesByKey[K]) each(k K, visit func(cd candidate, once bool)) {
	s := m.first.find(k)
	if s == nil {
		return
	}
	if s.decided != nil {
		visit(candidate{entry: s.e, shape: s.decided, known: true, whole: true}, true)
	} else {
		visit(s.e.candidate(true), true)
	}
	if len(m.more) == 0 {
		return // no key has a second shape: save the lookup
	}
	for _, e := range m.more[k] {
		visit(e.candidate(true), true)
	}
}

func (m shapesByKey[K]) all(visit func(cd candidate, once bool)) {
	m.first.each(func(e *entry) { visit(e.candidate(false), false) })
	for _, more := range m.more {
		for _, e := range more {
			visit(e.candidate(false), false)
		}
	}
}

// entry is one registered shape and its place in the index. Route reads the
// first four words of every shape it finds, unless the index's slot decides
// it (keySlot.decided); they share a cache line.
type entry struct {
	shape *fanout.Shape
	// pred is nil when the where clause is exactly one indexed equality:
	// then the shape's keys alone decide (see decide).
	pred *Predicate
	mark uint64   // the Route call that last collected it (dedup without a set)
	proj []string // projected columns, primary key included; nil: every column

	allPos  int
	scanPos int          // -1 when indexed
	col     *columnIndex // nil when on the scan list
	keys    []posting

	// Subqueries (deps.go, depmoves.go); nil without any.
	routed  bool
	deps    []*depState               // the results its clause reads
	subIdx  *depState                 // the result whose values index it (a top-level col IN (subquery))
	subPos  map[indexKey]int          // subIdx's values: where each one's posting is in keys
	pending map[string]map[string]int // subquery ID -> tuples moved in whose rows are not placed yet
	moves   map[string]subqueryMoves  // subquery ID -> its positions in the clause
}

// posting is one key of an indexed shape and its position in that key's bucket.
type posting struct {
	key  indexKey
	slot int
}

// equalityConjuncts finds the top-level conjuncts the index can use.
func equalityConjuncts(root node) []eqConjunct {
	if eq, ok := asEquality(root); ok {
		eq.whole = true
		return []eqConjunct{eq}
	}
	var out []eqConjunct
	var walk func(n node)
	walk = func(n node) {
		if a, ok := n.(*andNode); ok {
			for _, x := range a.args {
				walk(x)
			}
			return
		}
		if eq, ok := asEquality(n); ok {
			out = append(out, eq)
		}
	}
	if root != nil {
		walk(root)
	}
	return out
}

// asEquality recognises col = const, col IN (consts) (an OR of equalities on
// one column) and a bare boolean column.
func asEquality(n node) (eqConjunct, bool) {
	switch x := n.(type) {
	case *cmpNode:
		if x.op != opEq {
			return eqConjunct{}, false
		}
		col, cst := x.l, x.r
		if col.col == "" {
			col, cst = cst, col
		}
		if col.col == "" || cst.col != "" {
			return eqConjunct{}, false
		}
		eq := eqConjunct{col: col.col, kind: col.kind, dom: col.dom}
		if !cst.cnull { // col = NULL is never true: no keys, never a candidate
			eq.keys = []indexKey{key(col.dom, cst.c)}
		}
		return eq, true
	case *orNode:
		var out eqConjunct
		seen := map[indexKey]bool{}
		for i, a := range x.args {
			eq, ok := asEquality(a)
			if !ok || (i > 0 && (eq.col != out.col || eq.dom != out.dom || eq.kind != out.kind)) {
				return eqConjunct{}, false
			}
			if i == 0 {
				out = eqConjunct{col: eq.col, kind: eq.kind, dom: eq.dom}
			}
			for _, k := range eq.keys {
				if !seen[k] {
					seen[k] = true
					out.keys = append(out.keys, k)
				}
			}
		}
		return out, len(x.args) > 0
	case *cmpExprNode:
		// enum_col = 'label': enum equality is label equality, so the index
		// keys it by the label's text as a text column's value.
		// enum_col::text = 'label' (what Electric's docs recommend) too.
		col, cst := x.l, x.r
		if _, ok := cst.(*constExpr); !ok {
			col, cst = cst, col
		}
		if cx, ok := col.(*castX); ok && x.t.k == kText && !x.t.arr && cx.to.mod == 0 {
			if ce, ok := cx.x.(*colExpr); ok && ce.t.k == kEnum && !ce.t.arr {
				col = ce
			}
		}
		ce, ok1 := col.(*colExpr)
		k, ok2 := cst.(*constExpr)
		if x.op != opEq || !ok1 || !ok2 || ce.t.k != kEnum || ce.t.arr {
			return eqConjunct{}, false
		}
		eq := eqConjunct{col: ce.name, kind: kText, dom: dText}
		if !k.null {
			eq.keys = []indexKey{{s: k.v.s}}
		}
		return eq, true
	case *anyAllNode:
		// col = ANY('{...}' or $n): an IN list of the array's elements.
		ce, ok1 := x.x.(*colExpr)
		k, ok2 := x.arr.(*constExpr)
		if x.op != opEq || x.all || !ok1 || !ok2 || x.t.arr || !anyIndexable(x.t.k) {
			return eqConjunct{}, false
		}
		eq := eqConjunct{col: ce.name, kind: x.t.k, dom: domainOf(x.t.k)}
		if k.null {
			return eq, true
		}
		seen := map[indexKey]bool{}
		for i, v := range k.v.a.elems {
			if k.v.a.nulls[i] {
				continue
			}
			if kk := key(eq.dom, v); !seen[kk] {
				seen[kk] = true
				eq.keys = append(eq.keys, kk)
			}
		}
		return eq, true
	case *boolOperandNode:
		if x.x.col == "" {
			return eqConjunct{}, false
		}
		return eqConjunct{col: x.x.col, kind: x.x.kind, dom: dBool, keys: []indexKey{key(dBool, val{i: 1})}}, true
	}
	return eqConjunct{}, false
}

// insert places e in t: in the buckets of its most selective equality
// conjunct (fewest values), else on the scan list. When that conjunct is
// the whole where clause, e keeps no predicate: its keys decide.
func (t *tableIndex) insert(e *entry) {
	e.allPos = len(t.all)
	t.all = append(t.all, e)
	var best *eqConjunct
	for i := range e.pred.eqs {
		if eq := &e.pred.eqs[i]; best == nil || len(eq.keys) < len(best.keys) {
			best = eq
		}
	}
	if best == nil {
		e.pred.eqs = nil // only needed here
		e.scanPos = len(t.scan)
		t.scan = append(t.scan, e)
		return
	}
	eq := *best
	if eq.whole {
		e.pred = nil
	} else {
		e.pred.eqs = nil
	}
	e.scanPos = -1
	ci := t.column(eq.col, eq.kind, eq.dom)
	e.col = ci
	e.keys = make([]posting, len(eq.keys))
	for i, k := range eq.keys {
		e.keys[i] = posting{key: k, slot: ci.add(k, e)}
	}
	ci.n++
}

// column finds or creates the column index for (col, kind, dom).
func (t *tableIndex) column(col string, k kind, d domain) *columnIndex {
	for _, ci := range t.cols {
		if ci.col == col && ci.kind == k && ci.dom == d {
			return ci
		}
	}
	ci := newColumnIndex(col, k, d)
	t.cols = append(t.cols, ci)
	return ci
}

// remove takes e out of t, swapping the last element into its places.
func (t *tableIndex) remove(e *entry) {
	last := t.all[len(t.all)-1]
	t.all[e.allPos], last.allPos = last, e.allPos
	t.all[len(t.all)-1] = nil
	t.all = t.all[:len(t.all)-1]
	if e.col == nil {
		last := t.scan[len(t.scan)-1]
		t.scan[e.scanPos], last.scanPos = last, e.scanPos
		t.scan[len(t.scan)-1] = nil
		t.scan = t.scan[:len(t.scan)-1]
		return
	}
	ci := e.col
	for _, p := range e.keys {
		ci.unlink(p)
	}
	e.keys, e.subPos = nil, nil
	if e.subIdx != nil {
		e.subIdx.indexed = deleteEntry(e.subIdx.indexed, e)
		e.subIdx = nil
	}
	if ci.n--; ci.n == 0 {
		for i, x := range t.cols {
			if x == ci {
				t.cols = append(t.cols[:i], t.cols[i+1:]...)
				break
			}
		}
	}
	e.col = nil
}

// unlink removes the shape at p from its bucket; the shape moved into its
// slot learns its new position.
func (ci *columnIndex) unlink(p posting) {
	moved := ci.removeAt(p.key, p.slot)
	if moved.subPos != nil {
		if i, ok := moved.subPos[p.key]; ok {
			moved.keys[i].slot = p.slot
		}
		return
	}
	for i := range moved.keys {
		if moved.keys[i].key == p.key {
			moved.keys[i].slot = p.slot
		}
	}
}

// collect calls visit for every shape of t that row could match: the
// buckets of row's values, every indexed shape of a column row lacks (its
// value is unknown), and the scan list. cd.known is true when the index has
// decided that the shape matches row (see decide). once is true when the
// shape cannot come again for this row: it sits in one column index, and
// its keys are distinct, so it is in one bucket of row's values at most;
// but a shape with several keys comes once per key from visitAll.
func (t *tableIndex) collect(row fanout.Row, visit func(cd candidate, once bool)) {
	for _, ci := range t.cols {
		p, present := row[ci.col]
		if !present {
			ci.visitAll(visit)
			continue
		}
		if p == nil {
			continue // NULL equals nothing
		}
		v, err := convert(*p, ci.kind, ci.dom)
		if err != nil {
			// An unreadable value: let the full evaluation decide and report it.
			ci.visitAll(visit)
			continue
		}
		ci.visit(key(ci.dom, v), visit)
	}
	for _, e := range t.scan {
		visit(e.candidate(false), true)
	}
}

// decide evaluates the where clause of a shape without a predicate (one
// equality: col = c, col IN (...) or a bare boolean column) on row: TRUE
// only when row's value of col has one of the shape's keys. A missing or
// NULL value is not TRUE; an unreadable one counts as NULL and is returned
// as an error, as Predicate.EvalErr does.
func (e *entry) decide(row fanout.Row) (bool, error) {
	p := row[e.col.col]
	if p == nil {
		return false, nil
	}
	v, err := convert(*p, e.col.kind, e.col.dom)
	if err != nil {
		return false, fmt.Errorf("column %q: row value %w", e.col.col, err)
	}
	k := key(e.col.dom, v)
	for _, p := range e.keys {
		if p.key == k {
			return true, nil
		}
	}
	return false, nil
}

// sameColumn reports whether two schema columns are equal.
func sameColumn(a, b fanout.Column) bool {
	if a.Enum == nil || b.Enum == nil {
		return a == b
	}
	la, lb := *a.Enum, *b.Enum
	a.Enum, b.Enum = nil, nil
	return a == b && slices.Equal(la, lb)
}

// anyIndexable lists the kinds whose general-evaluator value is the value
// the index's keys are made of (key(domainOf(k), v)).
func anyIndexable(k kind) bool {
	return isInt(k) || k == kText || k == kVarchar || k == kUUID || k == kBool || isTemporal(k)
}
