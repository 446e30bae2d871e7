package match

// Postgres folds the constant parts of a clause when it plans the query, in
// order, and stops at what decides an AND, an OR or a coalesce: an error in
// a constant part fails the query unless an earlier constant made that part
// dead. Folding keeps such an error as a failing constant (errExpr,
// errNode); Compile fails if one is still reachable when the clause is built.

// errExpr is a constant whose evaluation failed.
type errExpr struct {
	t   typ
	err error
}

func (e *errExpr) typ() typ                    { return e.t }
func (e *errExpr) eval(c *evalCtx) (val, bool) { return c.fail(e.err) }
func (e *errExpr) children() []texpr           { return nil }

// errNode is a constant predicate whose evaluation failed.
type errNode struct{ err error }

func (n *errNode) eval(c *evalCtx) tri {
	c.fail(n.err)
	return tNull
}

// failingNode returns the error of a failing constant reachable from n.
func failingNode(n node) error {
	switch x := n.(type) {
	case *errNode:
		return x.err
	case *andNode:
		return failingNodes(x.args)
	case *orNode:
		return failingNodes(x.args)
	case *notNode:
		return failingNode(x.arg)
	case *boolTestNode:
		return failingNode(x.arg)
	case *exprBoolNode:
		return failingExpr(x.e)
	case *cmpExprNode:
		return failingExprs(x.l, x.r)
	case *likeExprNode:
		return failingExpr(x.x)
	case *distinctExprNode:
		return failingExprs(x.l, x.r)
	case *nullTestExprNode:
		return failingExpr(x.x)
	case *arrayOpNode:
		return failingExprs(x.a, x.b)
	case *anyAllNode:
		return failingExprs(x.x, x.arr)
	}
	return nil
}

func failingNodes(ns []node) error {
	for _, n := range ns {
		if err := failingNode(n); err != nil {
			return err
		}
	}
	return nil
}

func failingExpr(e texpr) error {
	switch x := e.(type) {
	case *errExpr:
		return x.err
	case *boolExpr:
		return failingNode(x.n)
	case *caseX:
		if err := failingNodes(x.conds); err != nil {
			return err
		}
		return failingExprs(x.results...)
	case *nullifX:
		return failingExprs(x.a, x.ca, x.b)
	case columnReader:
		return failingExprs(x.children()...)
	}
	return nil
}

func failingExprs(es ...texpr) error {
	for _, e := range es {
		if err := failingExpr(e); err != nil {
			return err
		}
	}
	return nil
}
