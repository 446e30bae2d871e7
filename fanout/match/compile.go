package match

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"

	"github.com/fanout/pipeline/fanout"
)

// wherePrefix turns the clause into a statement the Postgres parser accepts.
const wherePrefix = "SELECT 1 WHERE "

// Compile parses where with the Postgres parser and type-checks it against
// schema. Text comparisons use byte order, which is Postgres's order under
// the C collation only: other collations are not honoured. A timestamptz
// literal without an offset is read as UTC.
func Compile(where string, schema []fanout.Column) (*Predicate, error) {
	return CompileParams(where, nil, schema)
}

// CompileParams is Compile for a clause with $1, $2, ... placeholders:
// params[0] is $1's value, as text, typed by where it appears (as a quoted
// literal would be). A clause that uses $n without a value fails, and so
// does a value no $n uses. Subqueries are refused: CompileWith compiles
// them, given the schemas of the tables they read.
func CompileParams(where string, params []string, schema []fanout.Column) (*Predicate, error) {
	return compileClause(where, params, schema, nil)
}

// CompileWith is CompileParams for a clause that may read other tables
// through subqueries (`col IN (SELECT col FROM table WHERE ...)`, see
// subquery.go): tables holds the schemas of every table they read
// (SubqueryTables lists them).
func CompileWith(where string, params []string, schema []fanout.Column, tables []fanout.TableSchema) (*Predicate, error) {
	ts := make(map[string]fanout.TableSchema, len(tables))
	for _, t := range tables {
		ts[fanout.QualifiedTable(t.Table)] = t
	}
	return compileClause(where, params, schema, ts)
}

// CompileShape compiles s's where clause with its params, against its
// table's schema and the schemas of the tables its subqueries read.
func CompileShape(s *fanout.Shape) (*Predicate, error) {
	return CompileWith(s.Where, s.Params, s.Schema, s.Tables)
}

// compileClause compiles where; tables nil refuses subqueries.
func compileClause(where string, params []string, schema []fanout.Column, tables map[string]fanout.TableSchema) (*Predicate, error) {
	p := &Predicate{where: where}
	if strings.TrimSpace(where) == "" {
		if len(params) > 0 {
			return nil, fmt.Errorf("where clause is empty but %d parameter(s) were given; remove them", len(params))
		}
		return p, nil
	}
	sel, err := parseClause(where)
	if err != nil {
		return nil, err
	}
	c := newCompiler(schema, params, tables)
	if err := c.compileInto(p, sel.WhereClause); err != nil {
		return nil, err
	}
	for i := range params {
		if !c.usedParams[i+1] {
			return nil, fmt.Errorf("where clause: parameter $%d was given (%s) but the clause does not use it; remove it or reference it", i+1, quote(params[i]))
		}
	}
	if len(p.subs) > 0 {
		if err := c.subquerySQL(where, p); err != nil {
			return nil, err
		}
		if err := p.plan.checkPolarity(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// parseClause parses where as `SELECT 1 WHERE <where>` and checks that it
// is one boolean expression and nothing else.
func parseClause(where string) (*pg.SelectStmt, error) {
	tree, err := pg.Parse(wherePrefix + where)
	if err != nil {
		var pe *parser.Error
		if errors.As(err, &pe) && pe.Cursorpos > len(wherePrefix) {
			return nil, fmt.Errorf("where clause does not parse: %s (at character %d of the clause)", pe.Message, pe.Cursorpos-len(wherePrefix))
		}
		return nil, fmt.Errorf("where clause does not parse: %v", err)
	}
	if err := noCommentsOrSemicolons(where); err != nil {
		return nil, err
	}
	if len(tree.Stmts) != 1 {
		return nil, fmt.Errorf("where clause must be one boolean expression; it contains %d statements (remove the ';')", len(tree.Stmts))
	}
	sel := tree.Stmts[0].GetStmt().GetSelectStmt()
	if sel == nil || sel.WhereClause == nil || sel.Op != pg.SetOperation_SETOP_NONE ||
		len(sel.TargetList) != 1 || len(sel.FromClause) > 0 || len(sel.GroupClause) > 0 || sel.HavingClause != nil ||
		len(sel.WindowClause) > 0 || len(sel.SortClause) > 0 || sel.LimitCount != nil || sel.LimitOffset != nil ||
		len(sel.LockingClause) > 0 || sel.WithClause != nil || len(sel.DistinctClause) > 0 || sel.IntoClause != nil {
		return nil, fmt.Errorf("where clause must be one boolean expression, without GROUP BY, ORDER BY, LIMIT, UNION or similar clauses: %q", where)
	}
	return sel, nil
}

func newCompiler(schema []fanout.Column, params []string, tables map[string]fanout.TableSchema) *compiler {
	c := &compiler{cols: map[string]fanout.Column{}, used: map[string]bool{}, params: params, usedParams: map[int]bool{}, tables: tables}
	for _, col := range schema {
		c.cols[col.Name] = col
		c.names = append(c.names, col.Name)
	}
	return c
}

// compileInto compiles the boolean expression n into p: its evaluable
// tree, the columns it reads, the conjuncts the equality index can use,
// and, when it has subqueries, their list and the clause's disjunctive
// normal form (dnf.go).
func (c *compiler) compileInto(p *Predicate, n *pg.Node) error {
	var err error
	if p.root, err = c.boolean(n); err != nil {
		return err
	}
	if err := failingNode(p.root); err != nil {
		return fmt.Errorf("where clause: %v", err)
	}
	for name := range c.used {
		p.cols = append(p.cols, name)
	}
	sort.Strings(p.cols)
	p.eqs = equalityConjuncts(p.root)
	if len(c.subOrder) == 0 {
		return nil
	}
	p.subs = c.subOrder
	p.subConjs = subqueryConjuncts(p.root)
	if p.plan, err = c.dnfPlan(n); err != nil {
		return err
	}
	return nil
}

// noCommentsOrSemicolons rejects what would change the meaning of SQL that
// embeds the clause (a snapshot query appends to it): a trailing comment or ';'.
func noCommentsOrSemicolons(where string) error {
	scan, err := pg.Scan(where)
	if err != nil {
		return fmt.Errorf("where clause does not parse: %v", err)
	}
	for _, t := range scan.Tokens {
		switch t.Token {
		case pg.Token_SQL_COMMENT, pg.Token_C_COMMENT:
			return fmt.Errorf("where clause: comments are not allowed (at character %d)", t.Start+1)
		case pg.Token_ASCII_59:
			return fmt.Errorf("where clause must be one boolean expression; remove the ';' (at character %d)", t.Start+1)
		}
	}
	return nil
}

// compiler turns parse-tree nodes into evaluable nodes.
type compiler struct {
	cols       map[string]fanout.Column
	names      []string
	used       map[string]bool
	params     []string
	usedParams map[int]bool
	refs       int // column references compiled so far (a part without any is constant)

	// Subqueries (subquery.go). tables nil: subqueries are refused.
	tables     map[string]fanout.TableSchema
	subs       map[*pg.SubLink]*subqueryNode // compiled once, reused by the DNF's leaves
	subOrder   []*Subquery                   // this clause's subqueries, distinct, in order of appearance
	subRefs    int                           // subquery conditions compiled so far, reused ones too
	depth      int                           // nesting: 0 for a shape's clause, 1 inside its subqueries, ...
	qualifiers map[string]bool               // names a column may be qualified with (a subquery's table or alias)
}

// boolean compiles an expression that must yield a boolean. A part that
// reads no column is evaluated now, as Postgres's planner folds it: its error
// fails Compile, and AND / OR drop or short-circuit on its value (so
// `x / 0 > 1 OR true` is true, as in Postgres).
func (c *compiler) boolean(n *pg.Node) (node, error) {
	before := c.refs
	x, err := c.boolean1(n)
	if err != nil || c.refs != before {
		return x, err
	}
	if _, ok := x.(*constNode); ok {
		return x, nil
	}
	if failingNode(x) != nil {
		return x, nil
	}
	ctx := evalCtx{}
	v := x.eval(&ctx)
	if ctx.failed != nil {
		return &errNode{ctx.failed}, nil
	}
	return &constNode{v}, nil
}

// logic builds AND / OR over args as Postgres's planner simplifies them:
// a constant that decides the result replaces the whole, others are dropped.
func logic(and bool, args []node) node {
	decide, neutral := tFalse, tTrue // AND: FALSE decides, TRUE is neutral
	if !and {
		decide, neutral = tTrue, tFalse
	}
	var kept []node
	for i, a := range args {
		if failingNode(a) != nil {
			// Postgres fails folding this argument before it reaches a later one.
			kept = append(kept, args[i:]...)
			break
		}
		if k, ok := a.(*constNode); ok {
			switch k.v {
			case decide:
				return k
			case neutral:
				continue
			}
		}
		kept = append(kept, a)
	}
	switch len(kept) {
	case 0:
		return &constNode{neutral}
	case 1:
		return kept[0]
	}
	if and {
		return &andNode{kept}
	}
	return &orNode{kept}
}

// constNode is a folded predicate.
type constNode struct{ v tri }

func (n *constNode) eval(*evalCtx) tri { return n.v }

func (c *compiler) boolean1(n *pg.Node) (node, error) {
	switch {
	case n.GetBoolExpr() != nil:
		b := n.GetBoolExpr()
		args := make([]node, 0, len(b.Args))
		for _, a := range b.Args {
			x, err := c.boolean(a)
			if err != nil {
				return nil, err
			}
			args = append(args, x)
		}
		switch b.Boolop {
		case pg.BoolExprType_AND_EXPR:
			return logic(true, args), nil
		case pg.BoolExprType_OR_EXPR:
			return logic(false, args), nil
		case pg.BoolExprType_NOT_EXPR:
			return &notNode{args[0]}, nil
		}
	case n.GetAExpr() != nil:
		return c.aexpr(n.GetAExpr())
	case n.GetNullTest() != nil:
		t := n.GetNullTest()
		if isBooleanExpr(t.Arg) {
			// (a = 1 OR b) IS NULL is IS UNKNOWN.
			arg, err := c.boolean(t.Arg)
			if err != nil {
				return nil, err
			}
			return &boolTestNode{arg: arg, want: tNull, not: t.Nulltesttype == pg.NullTestType_IS_NOT_NULL}, nil
		}
		if !c.simple(t.Arg) {
			x, err := c.expr(t.Arg)
			if err != nil {
				return nil, err
			}
			return &nullTestExprNode{x: x, not: t.Nulltesttype == pg.NullTestType_IS_NOT_NULL}, nil
		}
		x, err := c.operand(t.Arg)
		if err != nil {
			return nil, fmt.Errorf("IS NULL: %w", err)
		}
		k := x.kind
		if k == kUnknown {
			k = kText
		}
		o, err := c.bind(x, k, domainOf(k))
		if err != nil {
			return nil, fmt.Errorf("where clause: constant %s: %v", x.desc, err)
		}
		return &nullTestNode{x: o, not: t.Nulltesttype == pg.NullTestType_IS_NOT_NULL}, nil
	case n.GetBooleanTest() != nil:
		t := n.GetBooleanTest()
		arg, err := c.boolean(t.Arg)
		if err != nil {
			return nil, err
		}
		switch t.Booltesttype {
		case pg.BoolTestType_IS_TRUE:
			return &boolTestNode{arg: arg, want: tTrue}, nil
		case pg.BoolTestType_IS_NOT_TRUE:
			return &boolTestNode{arg: arg, want: tTrue, not: true}, nil
		case pg.BoolTestType_IS_FALSE:
			return &boolTestNode{arg: arg, want: tFalse}, nil
		case pg.BoolTestType_IS_NOT_FALSE:
			return &boolTestNode{arg: arg, want: tFalse, not: true}, nil
		case pg.BoolTestType_IS_UNKNOWN:
			return &boolTestNode{arg: arg, want: tNull}, nil
		case pg.BoolTestType_IS_NOT_UNKNOWN:
			return &boolTestNode{arg: arg, want: tNull, not: true}, nil
		}
	case (n.GetColumnRef() != nil || n.GetAConst() != nil || n.GetTypeCast() != nil || n.GetParamRef() != nil) && c.simple(n):
		x, err := c.operand(n)
		if err != nil {
			return nil, err
		}
		if x.kind != kBool && x.kind != kUnknown {
			return nil, fmt.Errorf("where clause: %s is %s, not boolean; compare it with something (e.g. %s = ...)", x.desc, x.kind, x.desc)
		}
		o, err := c.bind(x, kBool, dBool)
		if err != nil {
			return nil, fmt.Errorf("where clause: constant %s: %v", x.desc, err)
		}
		return &boolOperandNode{o}, nil
	case n.GetSubLink() != nil:
		return c.subLink(n.GetSubLink())
	case n.GetSqlvalueFunction() != nil, n.GetCollateClause() != nil:
		return nil, unsupported(n)
	}
	return c.exprBool(n)
}

// aexpr compiles operator expressions: comparisons, IN, LIKE, BETWEEN, IS DISTINCT FROM.
func (c *compiler) aexpr(e *pg.A_Expr) (node, error) {
	name := opName(e)
	switch e.Kind {
	case pg.A_Expr_Kind_AEXPR_OP:
		if op, ok := cmpOps[name]; ok {
			if e.Lexpr == nil {
				return nil, fmt.Errorf("where clause: operator %q needs two operands", name)
			}
			return c.comparison(op, e.Lexpr, e.Rexpr)
		}
		switch name {
		case "@>", "<@", "&&":
			return c.arrayOp(name, e.Lexpr, e.Rexpr)
		case "~~", "!~~":
			return c.like(e.Lexpr, e.Rexpr, false, name == "!~~")
		case "~~*", "!~~*":
			return c.like(e.Lexpr, e.Rexpr, true, name == "!~~*")
		}
		return c.exprBool(&pg.Node{Node: &pg.Node_AExpr{AExpr: e}})
	case pg.A_Expr_Kind_AEXPR_LIKE:
		return c.like(e.Lexpr, e.Rexpr, false, name == "!~~")
	case pg.A_Expr_Kind_AEXPR_ILIKE:
		return c.like(e.Lexpr, e.Rexpr, true, name == "!~~*")
	case pg.A_Expr_Kind_AEXPR_IN:
		items := e.Rexpr.GetList().GetItems()
		if len(items) == 0 {
			return nil, fmt.Errorf("where clause: IN needs a list of constants")
		}
		not := name == "<>"
		op := opEq
		if not {
			op = opNe
		}
		general := !c.simple(e.Lexpr)
		for _, it := range items {
			general = general || !c.simple(it)
		}
		if general {
			return c.inList(op, e.Lexpr, items)
		}
		x, err := c.operand(e.Lexpr)
		if err != nil {
			return nil, err
		}
		list := make([]rawOperand, len(items))
		for i, it := range items {
			if list[i], err = c.operand(it); err != nil {
				return nil, err
			}
		}
		if err := inListTypes(&x, list); err != nil {
			return nil, err
		}
		args := make([]node, 0, len(items))
		for _, it := range list {
			l, r, err := c.bindPair(x, it)
			if err != nil {
				return nil, err
			}
			args = append(args, &cmpNode{op: op, l: l, r: r})
		}
		if not {
			return &andNode{args}, nil
		}
		return &orNode{args}, nil
	case pg.A_Expr_Kind_AEXPR_BETWEEN, pg.A_Expr_Kind_AEXPR_NOT_BETWEEN,
		pg.A_Expr_Kind_AEXPR_BETWEEN_SYM, pg.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		bounds := e.Rexpr.GetList().GetItems()
		if len(bounds) != 2 {
			return nil, fmt.Errorf("where clause: BETWEEN needs two bounds")
		}
		between := func(lo, hi *pg.Node) (node, error) {
			ge, err := c.comparison(opGe, e.Lexpr, lo)
			if err != nil {
				return nil, err
			}
			le, err := c.comparison(opLe, e.Lexpr, hi)
			if err != nil {
				return nil, err
			}
			return &andNode{[]node{ge, le}}, nil
		}
		x, err := between(bounds[0], bounds[1])
		if err != nil {
			return nil, err
		}
		if e.Kind == pg.A_Expr_Kind_AEXPR_BETWEEN_SYM || e.Kind == pg.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM {
			y, err := between(bounds[1], bounds[0])
			if err != nil {
				return nil, err
			}
			x = &orNode{[]node{x, y}}
		}
		if e.Kind == pg.A_Expr_Kind_AEXPR_NOT_BETWEEN || e.Kind == pg.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM {
			return &notNode{x}, nil
		}
		return x, nil
	case pg.A_Expr_Kind_AEXPR_DISTINCT, pg.A_Expr_Kind_AEXPR_NOT_DISTINCT:
		if !c.simple(e.Lexpr) || !c.simple(e.Rexpr) {
			return c.distinctExprs(e.Lexpr, e.Rexpr, e.Kind == pg.A_Expr_Kind_AEXPR_NOT_DISTINCT)
		}
		l, r, err := c.pair(e.Lexpr, e.Rexpr)
		if err != nil {
			return nil, err
		}
		return &distinctNode{l: l, r: r, not: e.Kind == pg.A_Expr_Kind_AEXPR_NOT_DISTINCT}, nil
	case pg.A_Expr_Kind_AEXPR_OP_ANY, pg.A_Expr_Kind_AEXPR_OP_ALL:
		return c.anyAll(name, e.Lexpr, e.Rexpr, e.Kind == pg.A_Expr_Kind_AEXPR_OP_ALL)
	case pg.A_Expr_Kind_AEXPR_SIMILAR:
		return nil, fmt.Errorf("where clause: SIMILAR TO is not supported in where clauses; use LIKE")
	case pg.A_Expr_Kind_AEXPR_NULLIF:
		return c.exprBool(&pg.Node{Node: &pg.Node_AExpr{AExpr: e}})
	}
	return nil, fmt.Errorf("where clause: operator expression %q is not supported in where clauses", name)
}

// isBooleanExpr reports whether n is an expression rather than a column or constant.
func isBooleanExpr(n *pg.Node) bool {
	if e := n.GetAExpr(); e != nil {
		switch e.Kind {
		case pg.A_Expr_Kind_AEXPR_OP:
			_, cmp := cmpOps[opName(e)]
			return e.Lexpr != nil && (cmp || boolOps[opName(e)])
		case pg.A_Expr_Kind_AEXPR_NULLIF:
			return false
		}
		return true
	}
	return n.GetBoolExpr() != nil || n.GetNullTest() != nil || n.GetBooleanTest() != nil
}

func opName(e *pg.A_Expr) string {
	if len(e.Name) == 0 {
		return ""
	}
	return e.Name[len(e.Name)-1].GetString_().GetSval()
}

func (c *compiler) comparison(op cmpOp, l, r *pg.Node) (node, error) {
	if !c.simple(l) || !c.simple(r) {
		a, err := c.expr(l)
		if err != nil {
			return nil, err
		}
		b, err := c.expr(r)
		if err != nil {
			return nil, err
		}
		return c.cmpExprs(op, a, b)
	}
	lo, ro, err := c.pair(l, r)
	if err != nil {
		return nil, err
	}
	return &cmpNode{op: op, l: lo, r: ro}, nil
}

// like compiles [NOT] LIKE / ILIKE with a constant pattern.
func (c *compiler) like(l, r *pg.Node, fold, not bool) (node, error) {
	op := "LIKE"
	if fold {
		op = "ILIKE"
	}
	esc := '\\'
	if f := r.GetFuncCall(); f != nil {
		if len(f.Args) != 2 {
			return nil, fmt.Errorf("where clause: %s ... ESCAPE needs a pattern and one escape character", op)
		}
		e, err := c.expr(f.Args[1])
		if err != nil {
			return nil, err
		}
		k, ok := e.(*constExpr)
		if !ok || k.null || (k.t.k != kUnknown && !isString(k.t.k)) || len([]rune(k.lit)) > 1 {
			return nil, fmt.Errorf("where clause: the ESCAPE of %s must be a quoted constant of one character, or '' for none", op)
		}
		esc = -1
		if k.lit != "" {
			esc = []rune(k.lit)[0]
		}
		r = f.Args[0]
	}
	if !c.simple(l) {
		x, err := c.expr(l)
		if err != nil {
			return nil, err
		}
		if x, err = c.coerce(x, scalar(kText)); err != nil {
			return nil, fmt.Errorf("where clause: %s needs text: %v", op, err)
		}
		pat, err := c.likePattern(op, r, fold, esc)
		if err != nil {
			return nil, err
		}
		return &likeExprNode{x: x, pat: pat, not: not}, nil
	}
	x, err := c.operand(l)
	if err != nil {
		return nil, err
	}
	k := x.kind
	if k == kUnknown {
		k = kText
	}
	if !isString(k) {
		return nil, fmt.Errorf("where clause: %s needs a text column, but %s is %s", op, x.desc, k)
	}
	if k == kBpchar {
		// Postgres matches a character(n) value with its padding: read it as text.
		k = kText
		x.kind = kText
	}
	pat, err := c.likePattern(op, r, fold, esc)
	if err != nil {
		return nil, err
	}
	o, err := c.bind(x, k, dText)
	if err != nil {
		return nil, fmt.Errorf("where clause: constant %s: %v", x.desc, err)
	}
	return &likeNode{x: o, pat: pat, not: not}, nil
}

// unsupported names a construct the matcher does not evaluate.
func unsupported(n *pg.Node) error {
	switch {
	case n.GetSubLink() != nil:
		return subLinkUnsupported(n.GetSubLink())
	case n.GetFuncCall() != nil:
		var parts []string
		for _, f := range n.GetFuncCall().Funcname {
			parts = append(parts, f.GetString_().GetSval())
		}
		return fmt.Errorf("where clause: function %s() is not supported (no function calls or aggregates)", strings.Join(parts, "."))
	case n.GetParamRef() != nil:
		return fmt.Errorf("where clause: parameters ($%d) are not supported; write the value", n.GetParamRef().Number)
	case n.GetCaseExpr() != nil:
		return fmt.Errorf("where clause: CASE is not supported")
	case n.GetCoalesceExpr() != nil:
		return fmt.Errorf("where clause: COALESCE is not supported")
	case n.GetSqlvalueFunction() != nil:
		return fmt.Errorf("where clause: CURRENT_DATE, now() and similar are not supported: a shape's filter must not depend on the time it is evaluated")
	case n.GetCollateClause() != nil:
		return fmt.Errorf("where clause: COLLATE is not supported (text compares in byte order)")
	}
	name := fmt.Sprintf("%T", n.GetNode())
	name = strings.TrimPrefix(name, "*pg_query.Node_")
	return fmt.Errorf("where clause: expression of kind %s is not supported", name)
}

// likePattern compiles a LIKE pattern that must be a constant (or $n).
func (c *compiler) likePattern(op string, r *pg.Node, fold bool, esc rune) (*likePattern, error) {
	e, err := c.expr(r)
	if err != nil {
		return nil, err
	}
	k, ok := e.(*constExpr)
	if !ok || k.null || (k.t.k != kUnknown && !isString(k.t.k)) {
		return nil, fmt.Errorf("where clause: the %s pattern must be a quoted text constant or a $n parameter", op)
	}
	lit := k.lit
	if k.t.k != kUnknown {
		lit = k.v.s
		if k.t.k == kBpchar {
			lit = strings.TrimRight(lit, " ")
		}
	}
	pat, err := compileLike(lit, fold, esc)
	if err != nil {
		return nil, fmt.Errorf("where clause: %s %s: %v", op, quote(lit), err)
	}
	return pat, nil
}
