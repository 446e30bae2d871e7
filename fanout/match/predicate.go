package match

import (
	"github.com/fanout/pipeline/fanout"
)

// Predicate is a compiled where clause. Eval is safe for concurrent use.
type Predicate struct {
	where string
	root  node     // nil: the empty where clause, every row matches
	cols  []string // the columns the clause reads, sorted
	eqs   []eqConjunct

	// Subqueries (subquery.go, dnf.go); all nil without any.
	subs     []*Subquery // the clause's own subqueries, distinct; nested ones are in their Where
	subConjs []subConjunct
	plan     *dnfPlan
}

// eqConjunct is a top-level `col = constant` or `col IN (constants)`: a row
// can only match when its col has one of keys (in domain dom). When whole,
// the conjunct is the entire clause: a row matches exactly then.
type eqConjunct struct {
	col   string
	kind  kind
	dom   domain
	keys  []indexKey
	whole bool
}

// Eval reports whether row satisfies the clause: true only when the clause
// is TRUE (NULL is not true). A column missing from row counts as NULL; a
// value that is not valid text of its column's type counts as NULL too
// (EvalErr reports it).
func (p *Predicate) Eval(row fanout.Row) bool {
	ok, _ := p.EvalErr(row)
	return ok
}

// EvalErr is Eval that also returns the first row value it could not read.
func (p *Predicate) EvalErr(row fanout.Row) (bool, error) {
	return p.EvalWith(row, nil)
}

// EvalWith is EvalErr for a clause with subqueries: res gives their
// current results. Without them (res nil, or a result it does not know)
// the row does not match and the error says why.
func (p *Predicate) EvalWith(row fanout.Row, res Results) (bool, error) {
	if p.root == nil {
		return true, nil
	}
	c := evalCtx{row: row, res: res}
	ok := p.root.eval(&c) == tTrue
	if c.failed != nil {
		// Postgres would fail the statement on this row: the row does not match.
		return false, c.failed
	}
	return ok, c.err
}

// Columns lists the columns the clause reads.
func (p *Predicate) Columns() []string { return p.cols }

// String is the clause as written.
func (p *Predicate) String() string { return p.where }

// covers reports whether row holds every column the clause reads (a NULL is
// a value; a missing key is not), so Eval's answer is the real one.
func (p *Predicate) covers(row fanout.Row) bool {
	if row == nil {
		return false
	}
	for _, c := range p.cols {
		if _, ok := row[c]; !ok {
			return false
		}
	}
	return true
}

// subConjunct is a top-level `col IN (subquery)` conjunct of one column: a
// row can only match when its col's value is in the subquery's result, so
// the registry indexes the shape under those values (deps.go).
type subConjunct struct {
	col string
	sub *Subquery
}

// subqueryConjuncts finds the top-level one-column IN (subquery) conjuncts.
func subqueryConjuncts(root node) []subConjunct {
	var out []subConjunct
	var walk func(n node)
	walk = func(n node) {
		switch x := n.(type) {
		case *andNode:
			for _, a := range x.args {
				walk(a)
			}
		case *subqueryNode:
			if len(x.left) == 1 {
				out = append(out, subConjunct{col: x.left[0].col, sub: x.sub})
			}
		}
	}
	walk(root)
	return out
}
