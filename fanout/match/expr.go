package match

import (
	"fmt"

	"github.com/fanout/pipeline/fanout"
)

// tri is SQL's three-valued truth.
type tri uint8

const (
	tFalse tri = iota
	tTrue
	tNull
)

func triOf(b bool) tri {
	if b {
		return tTrue
	}
	return tFalse
}

func (t tri) not() tri {
	switch t {
	case tTrue:
		return tFalse
	case tFalse:
		return tTrue
	}
	return tNull
}

// evalCtx carries the row being evaluated and the first value that could not
// be read (a row value that is not valid text of its column's type).
type evalCtx struct {
	row    fanout.Row
	err    error
	failed error   // an evaluation error (overflow, division by zero): the row's evaluation fails
	res    Results // the subqueries' results (subquery.go); nil without any
}

// node is a compiled boolean expression.
type node interface {
	eval(c *evalCtx) tri
}

// operand is a column or a constant, read in a comparison's domain.
type operand struct {
	col   string // "" for a constant
	kind  kind   // the column's kind
	dom   domain
	c     val // the constant, already converted
	cnull bool
}

// get returns the operand's value; null is true for SQL NULL and for a row
// value that cannot be read (recorded in c.err).
func (o *operand) get(c *evalCtx) (v val, null bool) {
	if o.col == "" {
		return o.c, o.cnull
	}
	p := c.row[o.col]
	if p == nil {
		return val{}, true
	}
	v, err := convert(*p, o.kind, o.dom)
	if err != nil {
		if c.err == nil {
			c.err = fmt.Errorf("column %q: row value %w", o.col, err)
		}
		return val{}, true
	}
	return v, false
}

type andNode struct{ args []node }

func (n *andNode) eval(c *evalCtx) tri {
	out := tTrue
	for _, a := range n.args {
		r := a.eval(c)
		if c.failed != nil {
			return tNull
		}
		switch r {
		case tFalse:
			return tFalse
		case tNull:
			out = tNull
		}
	}
	return out
}

type orNode struct{ args []node }

func (n *orNode) eval(c *evalCtx) tri {
	out := tFalse
	for _, a := range n.args {
		r := a.eval(c)
		if c.failed != nil {
			return tNull
		}
		switch r {
		case tTrue:
			return tTrue
		case tNull:
			out = tNull
		}
	}
	return out
}

type notNode struct{ arg node }

func (n *notNode) eval(c *evalCtx) tri { return n.arg.eval(c).not() }

// cmpOp is a comparison operator.
type cmpOp uint8

const (
	opEq cmpOp = iota
	opNe
	opLt
	opLe
	opGt
	opGe
)

var cmpOps = map[string]cmpOp{"=": opEq, "<>": opNe, "!=": opNe, "<": opLt, "<=": opLe, ">": opGt, ">=": opGe}

func (op cmpOp) holds(c int) bool {
	switch op {
	case opEq:
		return c == 0
	case opNe:
		return c != 0
	case opLt:
		return c < 0
	case opLe:
		return c <= 0
	case opGt:
		return c > 0
	}
	return c >= 0
}

type cmpNode struct {
	op   cmpOp
	l, r operand
}

func (n *cmpNode) eval(c *evalCtx) tri {
	a, an := n.l.get(c)
	if an {
		return tNull
	}
	b, bn := n.r.get(c)
	if bn {
		return tNull
	}
	return triOf(n.op.holds(compare(n.l.dom, a, b)))
}

// distinctNode is IS [NOT] DISTINCT FROM: NULL-safe, never NULL itself.
type distinctNode struct {
	l, r operand
	not  bool
}

func (n *distinctNode) eval(c *evalCtx) tri {
	a, an := n.l.get(c)
	b, bn := n.r.get(c)
	distinct := an != bn || (!an && compare(n.l.dom, a, b) != 0)
	return triOf(distinct != n.not)
}

type nullTestNode struct {
	x   operand
	not bool // IS NOT NULL
}

func (n *nullTestNode) eval(c *evalCtx) tri {
	_, null := n.x.get(c)
	return triOf(null != n.not)
}

// boolTestNode is IS [NOT] TRUE / FALSE / UNKNOWN: never NULL itself.
type boolTestNode struct {
	arg  node
	want tri
	not  bool
}

func (n *boolTestNode) eval(c *evalCtx) tri {
	return triOf((n.arg.eval(c) == n.want) != n.not)
}

// boolOperandNode uses a boolean column or constant as a predicate.
type boolOperandNode struct{ x operand }

func (n *boolOperandNode) eval(c *evalCtx) tri {
	v, null := n.x.get(c)
	if null {
		return tNull
	}
	return triOf(v.i == 1)
}

type likeNode struct {
	x   operand // in dText (bpchar keeps its padding, as Postgres's bpchar LIKE does)
	pat *likePattern
	not bool
}

func (n *likeNode) eval(c *evalCtx) tri {
	v, null := n.x.get(c)
	if null {
		return tNull
	}
	return triOf(n.pat.match(v.s) != n.not)
}
