package match

import (
	"fmt"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// Predicates over typed expressions (the general evaluator).

type nullTestExprNode struct {
	x   texpr
	not bool
}

func (n *nullTestExprNode) eval(c *evalCtx) tri {
	_, null := n.x.eval(c)
	return triOf(null != n.not)
}

type likeExprNode struct {
	x   texpr // text
	pat *likePattern
	not bool
}

func (n *likeExprNode) eval(c *evalCtx) tri {
	v, null := n.x.eval(c)
	if null {
		return tNull
	}
	return triOf(n.pat.match(v.s) != n.not)
}

type distinctExprNode struct {
	l, r texpr
	t    typ
	not  bool
}

func (n *distinctExprNode) eval(c *evalCtx) tri {
	a, an := n.l.eval(c)
	b, bn := n.r.eval(c)
	distinct := an != bn || (!an && compareTyped(n.t, a, b) != 0)
	return triOf(distinct != n.not)
}

func (c *compiler) distinctExprs(l, r *pg.Node, not bool) (node, error) {
	a, err := c.expr(l)
	if err != nil {
		return nil, err
	}
	b, err := c.expr(r)
	if err != nil {
		return nil, err
	}
	t, err := commonType(a.typ(), b.typ())
	if err != nil {
		return nil, fmt.Errorf("where clause: IS DISTINCT FROM: cannot compare %s with %s: %v", a.typ(), b.typ(), err)
	}
	if err := checkComparable(t, opEq); err != nil {
		return nil, err
	}
	if a, err = c.coerce(a, t); err != nil {
		return nil, err
	}
	if b, err = c.coerce(b, t); err != nil {
		return nil, err
	}
	return &distinctExprNode{l: a, r: b, t: t, not: not}, nil
}

// inList compiles x [NOT] IN (...) with expressions: x = ANY(ARRAY[...]) in
// the common type of x and the items.
func (c *compiler) inList(op cmpOp, l *pg.Node, items []*pg.Node) (node, error) {
	x, err := c.expr(l)
	if err != nil {
		return nil, err
	}
	all := []texpr{x}
	for _, it := range items {
		e, err := c.expr(it)
		if err != nil {
			return nil, err
		}
		all = append(all, e)
	}
	t, err := commonTypeOf(all, "IN (...)")
	if err != nil {
		return nil, err
	}
	if err := checkComparable(t, op); err != nil {
		return nil, err
	}
	for i := range all {
		if all[i], err = c.coerce(all[i], t); err != nil {
			return nil, err
		}
	}
	args := make([]node, 0, len(items))
	for _, e := range all[1:] {
		args = append(args, &cmpExprNode{op: op, l: all[0], r: e, t: t})
	}
	if op == opNe {
		return &andNode{args}, nil
	}
	return &orNode{args}, nil
}
