package match

import (
	"fmt"
	"strconv"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// expr compiles a value expression of the general evaluator; constant
// sub-expressions are folded (an error there fails Compile, as Postgres's
// planner fails the query).
func (c *compiler) expr(n *pg.Node) (texpr, error) {
	e, err := c.expr1(n)
	if err != nil {
		return nil, err
	}
	return fold(e)
}

func (c *compiler) expr1(n *pg.Node) (texpr, error) {
	switch {
	case n.GetColumnRef() != nil:
		raw, err := c.columnRef(n.GetColumnRef())
		if err != nil {
			return nil, err
		}
		return raw, nil
	case n.GetAConst() != nil:
		return constTexpr(n.GetAConst())
	case n.GetParamRef() != nil:
		lit, err := c.param(n.GetParamRef().Number)
		if err != nil {
			return nil, err
		}
		return &constExpr{t: scalar(kUnknown), lit: lit, desc: fmt.Sprintf("$%d (%s)", n.GetParamRef().Number, quote(lit))}, nil
	case n.GetTypeCast() != nil:
		return c.castNode(n.GetTypeCast())
	case n.GetAExpr() != nil:
		e := n.GetAExpr()
		if e.Kind == pg.A_Expr_Kind_AEXPR_OP {
			name := opName(e)
			if _, cmp := cmpOps[name]; !cmp && !boolOps[name] {
				return c.operator(name, e.Lexpr, e.Rexpr)
			}
		}
		if e.Kind == pg.A_Expr_Kind_AEXPR_NULLIF {
			return c.nullif(e.Lexpr, e.Rexpr)
		}
	case n.GetFuncCall() != nil:
		return c.funcCall(n.GetFuncCall())
	case n.GetCoalesceExpr() != nil:
		return c.variadic("coalesce", n.GetCoalesceExpr().Args)
	case n.GetMinMaxExpr() != nil:
		name := "greatest"
		if n.GetMinMaxExpr().Op == pg.MinMaxOp_IS_LEAST {
			name = "least"
		}
		return c.variadic(name, n.GetMinMaxExpr().Args)
	case n.GetCaseExpr() != nil:
		return c.caseExpr(n.GetCaseExpr())
	case n.GetAArrayExpr() != nil:
		return c.arrayCtor(n.GetAArrayExpr().Elements, typ{})
	}
	if isBooleanExpr(n) {
		b, err := c.boolean(n)
		if err != nil {
			return nil, err
		}
		return &boolExpr{b}, nil
	}
	return nil, unsupported(n)
}

// boolOps are the A_Expr operators compiled as predicates (boolean nodes).
var boolOps = map[string]bool{"~~": true, "!~~": true, "~~*": true, "!~~*": true, "@>": true, "<@": true, "&&": true}

func (c *compiler) columnRef(ref *pg.ColumnRef) (*colExpr, error) {
	raw, err := c.column(ref)
	if err != nil {
		return nil, err
	}
	return &colExpr{name: raw.col, t: raw.t}, nil
}

// param is $n's value; a clause that names a parameter it was not given fails.
func (c *compiler) param(n int32) (string, error) {
	if n < 1 || int(n) > len(c.params) {
		return "", fmt.Errorf("where clause uses $%d but %d parameter(s) were given; pass a value for each $n (params[%d] in the HTTP API, --param with fanoutctl)", n, len(c.params), n)
	}
	c.usedParams[int(n)] = true
	return c.params[n-1], nil
}

func constTexpr(a *pg.A_Const) (texpr, error) {
	raw, err := constant(a)
	if err != nil {
		return nil, err
	}
	if raw.null || raw.kind == kUnknown {
		return &constExpr{t: scalar(kUnknown), null: raw.null, lit: raw.lit, desc: raw.desc}, nil
	}
	v, err := literal(raw.lit, scalar(raw.kind))
	if err != nil {
		return nil, fmt.Errorf("where clause: constant %s: %v", raw.desc, err)
	}
	return &constExpr{t: scalar(raw.kind), v: v, desc: raw.desc}, nil
}

// boolExpr is a predicate used as a boolean value (in CASE, coalesce, ...).
type boolExpr struct{ n node }

func (e *boolExpr) typ() typ { return scalar(kBool) }
func (e *boolExpr) eval(c *evalCtx) (val, bool) {
	switch e.n.eval(c) {
	case tTrue:
		return val{i: 1}, false
	case tFalse:
		return val{}, false
	}
	return val{}, true
}
func (e *boolExpr) children() []texpr { return []texpr{&opaque{}} }

// opaque makes readsColumn assume a predicate reads a column: predicates
// are not folded.
type opaque struct{}

func (*opaque) typ() typ                  { return scalar(kBool) }
func (*opaque) eval(*evalCtx) (val, bool) { return val{}, true }

// exprBoolNode uses a boolean-valued expression as a predicate.
type exprBoolNode struct{ e texpr }

func (n *exprBoolNode) eval(c *evalCtx) tri {
	v, null := n.e.eval(c)
	if null {
		return tNull
	}
	return triOf(v.i == 1)
}

// exprBool compiles n as a boolean-valued expression.
func (c *compiler) exprBool(n *pg.Node) (node, error) {
	e, err := c.expr(n)
	if err != nil {
		return nil, err
	}
	if e.typ().k != kBool && e.typ().k != kUnknown {
		return nil, fmt.Errorf("where clause: the expression is %s, not boolean; compare it with something", e.typ())
	}
	if e, err = c.coerce(e, scalar(kBool)); err != nil {
		return nil, err
	}
	if k, ok := e.(*constExpr); ok {
		return &boolOperandNode{operand{kind: kBool, dom: dBool, c: k.v, cnull: k.null}}, nil
	}
	return &exprBoolNode{e}, nil
}

// castNode compiles ::type, CAST(x AS type) and type 'literal'.
func (c *compiler) castNode(t *pg.TypeCast) (texpr, error) {
	to, err := c.typeName(t.TypeName)
	if err != nil {
		return nil, err
	}
	if a := t.Arg.GetAArrayExpr(); a != nil && to.t.arr {
		return c.arrayCtor(a.Elements, to.t.elem())
	}
	x, err := c.expr(t.Arg)
	if err != nil {
		return nil, err
	}
	return c.explicitCast(x, to)
}

// castTarget is a cast's type with its modifiers.
type castTarget struct {
	t         typ
	precision int // numeric(p, s): p > 0
	scale     int
}

func (c *compiler) typeName(tn *pg.TypeName) (castTarget, error) {
	var names []string
	for _, n := range tn.GetNames() {
		names = append(names, n.GetString_().GetSval())
	}
	name := ""
	if len(names) > 0 {
		name = names[len(names)-1]
	}
	var mods []int
	for _, m := range tn.GetTypmods() {
		a := m.GetAConst()
		if a == nil || a.GetIval() == nil {
			return castTarget{}, fmt.Errorf("where clause: type modifier of %s must be an integer", name)
		}
		mods = append(mods, int(a.GetIval().Ival))
	}
	k, ok := kindOfTypeName(name)
	var t typ
	if !ok {
		e := c.enumByName(name)
		if e == nil {
			return castTarget{}, fmt.Errorf("where clause: cast to type %s is not supported (supported: %s; an enum only when a column of the table has that type)", name, supportedTypes)
		}
		t = typ{k: kEnum, enum: e}
	} else {
		t = scalar(k)
	}
	t.arr = len(tn.GetArrayBounds()) > 0
	out := castTarget{t: t}
	switch {
	case len(mods) == 0:
	case (k == kVarchar || k == kBpchar) && len(mods) == 1 && mods[0] > 0:
		out.t.mod = mods[0]
	case k == kNumeric && len(mods) <= 2 && mods[0] >= 1 && mods[0] <= 1000:
		out.precision = mods[0]
		if len(mods) == 2 {
			out.scale = mods[1]
		}
		if out.scale < 0 || out.scale > out.precision {
			return castTarget{}, fmt.Errorf("where clause: numeric(%d,%d): the scale must be between 0 and the precision", out.precision, out.scale)
		}
	default:
		return castTarget{}, fmt.Errorf("where clause: type modifiers on %s are not supported (only character(n), character varying(n), numeric(p[,s]))", name)
	}
	if out.t.arr && (out.precision > 0 || out.t.mod > 0) {
		return castTarget{}, fmt.Errorf("where clause: casts to arrays with type modifiers are not supported; cast to %s[]", name)
	}
	return out, nil
}

func (c *compiler) enumByName(name string) *enumType {
	for _, col := range c.cols {
		t, ok := typeOfColumn(col)
		if ok && t.k == kEnum && (col.Type == name || strings.TrimSuffix(col.Type, "[]") == name) {
			return t.enum
		}
	}
	return nil
}

// caseExpr compiles CASE [x] WHEN ... THEN ... [ELSE ...] END.
func (c *compiler) caseExpr(ce *pg.CaseExpr) (texpr, error) {
	var arg texpr
	var err error
	if ce.Arg != nil {
		if arg, err = c.expr(ce.Arg); err != nil {
			return nil, err
		}
	}
	out := &caseX{}
	var results []texpr
	for _, w := range ce.Args {
		cw := w.GetCaseWhen()
		var cond node
		if arg != nil {
			r, err := c.expr(cw.Expr)
			if err != nil {
				return nil, err
			}
			if cond, err = c.cmpExprs(opEq, arg, r); err != nil {
				return nil, err
			}
		} else if cond, err = c.boolean(cw.Expr); err != nil {
			return nil, err
		}
		res, err := c.expr(cw.Result)
		if err != nil {
			return nil, err
		}
		out.conds = append(out.conds, cond)
		results = append(results, res)
	}
	if ce.Defresult != nil {
		d, err := c.expr(ce.Defresult)
		if err != nil {
			return nil, err
		}
		results = append(results, d)
	} else {
		results = append(results, &constExpr{t: scalar(kUnknown), null: true, desc: "NULL"})
	}
	t, err := commonTypeOf(results, "CASE")
	if err != nil {
		return nil, err
	}
	for i := range results {
		if results[i], err = c.coerce(results[i], t); err != nil {
			return nil, err
		}
	}
	out.results, out.t = results, t
	return out, nil
}

type caseX struct {
	conds   []node
	results []texpr // one more than conds: the ELSE
	t       typ
}

func (e *caseX) typ() typ          { return e.t }
func (e *caseX) children() []texpr { return append([]texpr{&opaque{}}, e.results...) }
func (e *caseX) eval(c *evalCtx) (val, bool) {
	for i, cond := range e.conds {
		r := cond.eval(c)
		if c.failed != nil {
			return val{}, true
		}
		if r == tTrue {
			return e.results[i].eval(c)
		}
	}
	return e.results[len(e.results)-1].eval(c)
}

// cmpExprNode compares two typed expressions, already coerced to one type.
type cmpExprNode struct {
	op   cmpOp
	l, r texpr
	t    typ
}

func (n *cmpExprNode) eval(c *evalCtx) tri {
	a, an := n.l.eval(c)
	b, bn := n.r.eval(c)
	if an || bn {
		return tNull
	}
	return triOf(n.op.holds(compareTyped(n.t, a, b)))
}

// cmpExprs builds a comparison in the general evaluator.
func (c *compiler) cmpExprs(op cmpOp, l, r texpr) (node, error) {
	t, err := commonType(l.typ(), r.typ())
	if err != nil {
		return nil, fmt.Errorf("where clause: cannot compare %s with %s: %v", l.typ(), r.typ(), err)
	}
	if err := checkComparable(t, op); err != nil {
		return nil, err
	}
	if l, err = c.coerce(l, t); err != nil {
		return nil, err
	}
	if r, err = c.coerce(r, t); err != nil {
		return nil, err
	}
	return &cmpExprNode{op: op, l: l, r: r, t: t}, nil
}

func checkComparable(t typ, op cmpOp) error {
	switch {
	case t.k == kJSON:
		return fmt.Errorf("where clause: json has no comparison operators in Postgres; cast to jsonb (col::jsonb = '...')")
	case t.k == kJSONB && op != opEq && op != opNe:
		return fmt.Errorf("where clause: only = and <> are supported on jsonb")
	case t.arr && t.k == kJSONB && op != opEq && op != opNe:
		return fmt.Errorf("where clause: only = and <> are supported on jsonb arrays")
	}
	return nil
}

// nullif compiles NULLIF(a, b).
func (c *compiler) nullif(l, r *pg.Node) (texpr, error) {
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
		return nil, fmt.Errorf("where clause: NULLIF(%s, %s): %v", a.typ(), b.typ(), err)
	}
	ca, err := c.coerce(a, t)
	if err != nil {
		return nil, err
	}
	if b, err = c.coerce(b, t); err != nil {
		return nil, err
	}
	if a.typ().k == kUnknown {
		a = ca
	}
	return &nullifX{a: a, ca: ca, b: b, t: t}, nil
}

type nullifX struct {
	a, ca, b texpr
	t        typ
}

func (e *nullifX) typ() typ          { return e.a.typ() }
func (e *nullifX) children() []texpr { return []texpr{e.a, e.b} }
func (e *nullifX) eval(c *evalCtx) (val, bool) {
	v, null := e.a.eval(c)
	if null {
		return v, null
	}
	cv, _ := e.ca.eval(c)
	w, wn := e.b.eval(c)
	if !wn && compareTyped(e.t, cv, w) == 0 {
		return val{}, true
	}
	return v, false
}

func intLit(e texpr) (int64, bool) {
	k, ok := e.(*constExpr)
	if !ok || k.null {
		return 0, false
	}
	if isInt(k.t.k) {
		return k.v.i, true
	}
	if k.t.k == kUnknown {
		i, err := strconv.ParseInt(strings.TrimSpace(k.lit), 10, 32)
		return i, err == nil
	}
	return 0, false
}
