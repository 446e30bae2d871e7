package match

import (
	"slices"

	"github.com/fanout/pipeline/fanout"
)

// The equality index: for each table, the shapes that have a top-level
// `col = constant` (or `col IN (...)`) conjunct sit in a bucket keyed by
// (column, value); the rest sit on the table's scan list. A row change
// evaluates only the shapes in the buckets of its own values plus the scan
// list, so the cost of equality filters does not grow with their number.

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
	if slices.Equal(s.Schema, t.schema) {
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
type columnIndex struct {
	col     string
	kind    kind
	dom     domain
	buckets map[string][]*entry
	n       int
}

// entry is one registered shape and its place in the index.
type entry struct {
	shape *fanout.Shape
	pred  *Predicate
	proj  []string // projected columns, primary key included; nil: every column
	mark  uint64   // the Route call that last collected it (dedup without a set)

	allPos  int
	scanPos int          // -1 when indexed
	col     *columnIndex // nil when on the scan list
	keys    []string
	slots   []int // position in col.buckets[keys[i]]
}

// equalityConjuncts finds the top-level conjuncts the index can use.
func equalityConjuncts(root node) []eqConjunct {
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
			eq.keys = []string{key(col.dom, cst.c)}
		}
		return eq, true
	case *orNode:
		var out eqConjunct
		seen := map[string]bool{}
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
	case *boolOperandNode:
		if x.x.col == "" {
			return eqConjunct{}, false
		}
		return eqConjunct{col: x.x.col, kind: x.x.kind, dom: dBool, keys: []string{key(dBool, val{i: 1})}}, true
	}
	return eqConjunct{}, false
}

// insert places e in t: in the buckets of its most selective equality
// conjunct (fewest values), else on the scan list.
func (t *tableIndex) insert(e *entry) {
	e.allPos = len(t.all)
	t.all = append(t.all, e)
	var best *eqConjunct
	for i := range e.pred.eqs {
		if eq := &e.pred.eqs[i]; best == nil || len(eq.keys) < len(best.keys) {
			best = eq
		}
	}
	e.pred.eqs = nil // only needed here; the chosen keys stay in e.keys
	if best == nil {
		e.scanPos = len(t.scan)
		t.scan = append(t.scan, e)
		return
	}
	e.scanPos = -1
	ci := t.column(best.col, best.kind, best.dom)
	e.col, e.keys = ci, best.keys
	e.slots = make([]int, len(best.keys))
	for i, k := range best.keys {
		e.slots[i] = len(ci.buckets[k])
		ci.buckets[k] = append(ci.buckets[k], e)
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
	ci := &columnIndex{col: col, kind: k, dom: d, buckets: map[string][]*entry{}}
	t.cols = append(t.cols, ci)
	return ci
}

// remove takes e out of t, swapping the last element into its places.
func (t *tableIndex) remove(e *entry) {
	last := t.all[len(t.all)-1]
	t.all[e.allPos], last.allPos = last, e.allPos
	t.all = t.all[:len(t.all)-1]
	if e.col == nil {
		last := t.scan[len(t.scan)-1]
		t.scan[e.scanPos], last.scanPos = last, e.scanPos
		t.scan = t.scan[:len(t.scan)-1]
		return
	}
	ci := e.col
	for i, k := range e.keys {
		b := ci.buckets[k]
		pos := e.slots[i]
		moved := b[len(b)-1]
		b[pos] = moved
		for j, mk := range moved.keys {
			if mk == k {
				moved.slots[j] = pos
			}
		}
		b[len(b)-1] = nil
		if b = b[:len(b)-1]; len(b) == 0 {
			delete(ci.buckets, k)
		} else {
			ci.buckets[k] = b
		}
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

// collect calls visit for every shape of t that row could match: the
// buckets of row's values, every indexed shape of a column row lacks (its
// value is unknown), and the scan list.
func (t *tableIndex) collect(row fanout.Row, visit func(*entry)) {
	for _, ci := range t.cols {
		p, present := row[ci.col]
		if !present {
			for _, b := range ci.buckets {
				for _, e := range b {
					visit(e)
				}
			}
			continue
		}
		if p == nil {
			continue // NULL equals nothing
		}
		v, err := convert(*p, ci.kind, ci.dom)
		if err != nil {
			// An unreadable value: let the full evaluation decide and report it.
			for _, b := range ci.buckets {
				for _, e := range b {
					visit(e)
				}
			}
			continue
		}
		for _, e := range ci.buckets[key(ci.dom, v)] {
			visit(e)
		}
	}
	for _, e := range t.scan {
		visit(e)
	}
}
