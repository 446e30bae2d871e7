package match

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/fanout/pipeline/fanout"
)

// Subqueries, as Electric 1.7 accepts them: `expr IN (SELECT col FROM
// table [WHERE ...])`, with a column or a row of columns on the left
// (`(a, b) IN (SELECT x, y FROM t)`), `NOT IN`, under any AND / OR / NOT,
// nested (the subselect's WHERE may hold subqueries), with $n parameters
// anywhere. The subselect is a plain list of columns of one table and an
// optional WHERE: any other clause, EXISTS, a scalar subquery or another
// operator than IN / = ANY is refused with an error that says so.
//
// A subquery's rows are not read here: evaluating a clause with subqueries
// needs their current results (Results), which ingest keeps from the
// replication stream (deps.go) and a snapshot reads in its own transaction.

// maxSubqueryDepth bounds nesting (a subquery inside a subquery's WHERE ...).
const maxSubqueryDepth = 4

// Subquery is one `left IN (SELECT columns FROM table [WHERE where])` of a
// where clause. Two subqueries with equal ID have equal results, whichever
// shapes they are in.
type Subquery struct {
	// ID identifies the result set: the subselect with its parameters
	// written in, and the types its values are compared in.
	ID string
	// Table is the table it reads, schema-qualified; PrimaryKey and Schema
	// are that table's (from fanout.Shape.Tables).
	Table      string
	PrimaryKey []string
	Schema     []fanout.Column
	// Columns are the selected columns, Left the columns of the outer row
	// compared with them (same length).
	Columns []string
	Left    []string
	// Where is the subselect's WHERE, compiled against Table (nil: every
	// row); it may have subqueries of its own (Where.Subqueries).
	Where *Predicate
	// SQL is the subselect, with the parameters written in as literals:
	// `SELECT cols FROM table WHERE ...`; WhereSQL its WHERE alone ("" for
	// none).
	SQL      string
	WhereSQL string

	kinds  []kind   // the selected columns' kinds
	lkinds []kind   // the left columns' kinds
	doms   []domain // the domains each pair is compared in

	dep *depState // the registry's state of its result, once it has one (saves a lookup per evaluation)
}

// Arity is how many columns the subquery selects.
func (s *Subquery) Arity() int { return len(s.Columns) }

// Subqueries lists the clause's own subqueries, distinct by ID, in order of
// appearance (nested ones are in their parent's Where).
func (p *Predicate) Subqueries() []*Subquery { return p.subs }

// HasSubqueries reports whether the clause reads other tables.
func (p *Predicate) HasSubqueries() bool { return len(p.subs) > 0 }

// SubqueryTables lists the tables the subqueries of where read, nested ones
// included, schema-qualified, without duplicates: the schemas CompileWith
// needs. It does not check the clause beyond parsing it.
func SubqueryTables(where string) ([]string, error) {
	if strings.TrimSpace(where) == "" {
		return nil, nil
	}
	tree, err := pg.Parse(wherePrefix + where)
	if err != nil {
		return nil, fmt.Errorf("where clause does not parse: %v", err)
	}
	var out []string
	seen := map[string]bool{}
	walkNodes(tree, func(n *pg.Node) {
		sl := n.GetSubLink()
		if sl == nil {
			return
		}
		for _, f := range sl.GetSubselect().GetSelectStmt().GetFromClause() {
			if rv := f.GetRangeVar(); rv != nil {
				t := qualifiedRangeVar(rv)
				if !seen[t] {
					seen[t] = true
					out = append(out, t)
				}
			}
		}
	})
	return out, nil
}

func qualifiedRangeVar(rv *pg.RangeVar) string {
	schema := rv.Schemaname
	if schema == "" {
		schema = "public"
	}
	return schema + "." + rv.Relname
}

// subqueryNode evaluates `left IN (subquery)` on a row, against the
// subquery's current result, with SQL's semantics (see Result.in).
type subqueryNode struct {
	sub  *Subquery
	left []operand // the outer row's columns, read in their comparison domains
}

func (n *subqueryNode) eval(c *evalCtx) tri {
	if c.res == nil {
		if c.failed == nil {
			c.failed = fmt.Errorf("the result of subquery %s is not known here (internal: evaluated without results)", n.sub.SQL)
		}
		return tNull
	}
	r := c.res.Result(n.sub)
	if r == nil {
		if c.failed == nil {
			c.failed = fmt.Errorf("the result of subquery %s is not loaded", n.sub.SQL)
		}
		return tNull
	}
	if len(n.left) == 1 { // the common case, without allocating
		v, null := n.left[0].get(c)
		if null {
			if r.rows == 0 {
				return tFalse
			}
			return tNull
		}
		var buf [24]byte
		return r.inOne(appendCanonical(buf[:0], n.left[0].dom, v))
	}
	return r.in(n.leftKey(c))
}

// leftKey reads the row's left side: its canonical tuple key, and which
// elements are NULL (an unreadable value counts as NULL and is reported).
func (n *subqueryNode) leftKey(c *evalCtx) tupleKey {
	var k tupleKey
	for i := range n.left {
		v, null := n.left[i].get(c)
		if null {
			k.addNull()
			continue
		}
		k.add(n.left[i].dom, v)
	}
	return k
}

// subLink compiles a subquery used as a condition.
func (c *compiler) subLink(sl *pg.SubLink) (node, error) {
	if c.tables == nil {
		return nil, fmt.Errorf("where clause: subqueries are not supported here")
	}
	if err := subLinkForm(sl); err != nil {
		return nil, err
	}
	c.subRefs++
	if n, ok := c.subs[sl]; ok {
		return n, nil
	}
	if c.subs == nil {
		c.subs = map[*pg.SubLink]*subqueryNode{}
	}
	if c.depth >= maxSubqueryDepth {
		return nil, fmt.Errorf("where clause: subqueries nested more than %d deep are not supported", maxSubqueryDepth)
	}
	sel := sl.Subselect.GetSelectStmt()
	if err := plainSubselect(sel); err != nil {
		return nil, err
	}
	rv := sel.FromClause[0].GetRangeVar()
	table := qualifiedRangeVar(rv)
	ts, ok := c.tables[table]
	if !ok {
		return nil, fmt.Errorf("where clause: the subquery reads table %s, whose schema was not loaded (internal: list it with SubqueryTables)", table)
	}
	inner := newCompiler(ts.Schema, c.params, c.tables)
	inner.usedParams = c.usedParams // $n used anywhere counts for the whole clause
	inner.depth = c.depth + 1
	inner.qualifiers = map[string]bool{rv.Relname: true}
	if rv.Alias != nil {
		inner.qualifiers = map[string]bool{rv.Alias.Aliasname: true}
	}
	inner.subs = c.subs

	left, err := c.subqueryLeft(sl.Testexpr)
	if err != nil {
		return nil, err
	}
	if len(sel.TargetList) != len(left) {
		return nil, fmt.Errorf("where clause: the subquery selects %d column(s) but is compared with %d; select as many columns as the left side of IN has", len(sel.TargetList), len(left))
	}
	sub := &Subquery{Table: table, PrimaryKey: ts.PrimaryKey, Schema: ts.Schema}
	n := &subqueryNode{sub: sub}
	for i, t := range sel.TargetList {
		ref := t.GetResTarget().GetVal().GetColumnRef()
		if ref == nil {
			return nil, fmt.Errorf("where clause: a subquery must select plain columns of its table, not expressions (item %d of its select list)", i+1)
		}
		right, err := inner.column(ref)
		if err != nil {
			return nil, err
		}
		l := left[i]
		if right.t.arr || !oldKind(right.t.k) || l.t.arr || !oldKind(l.t.k) {
			return nil, fmt.Errorf("where clause: IN (SELECT ...) compares %s (%s) with %s of table %s (%s): only scalar numbers, text, booleans, uuids, dates and timestamps can be compared through a subquery", l.desc, typeName(l.t), right.desc, table, typeName(right.t))
		}
		d, ok := commonDomain(l.kind, right.kind)
		if !ok {
			return nil, fmt.Errorf("where clause: IN (SELECT ...) cannot compare %s (%s) with %s of table %s (%s)", l.desc, l.kind, right.desc, table, right.kind)
		}
		sub.Columns = append(sub.Columns, right.col)
		sub.Left = append(sub.Left, l.col)
		sub.kinds = append(sub.kinds, right.kind)
		sub.lkinds = append(sub.lkinds, l.kind)
		sub.doms = append(sub.doms, d)
		n.left = append(n.left, operand{col: l.col, kind: l.kind, dom: d})
	}
	if sel.WhereClause != nil {
		sub.Where = &Predicate{}
		if err := inner.compileInto(sub.Where, sel.WhereClause); err != nil {
			return nil, err
		}
	}
	c.subs[sl] = n
	// The ID is set once the SQL is known (subquerySQL); until then
	// subqueries are told apart by node.
	c.subOrder = append(c.subOrder, sub)
	return n, nil
}

// subqueryLeft compiles the left side of IN (SELECT ...): a column of the
// outer table, or a row of them.
func (c *compiler) subqueryLeft(n *pg.Node) ([]rawOperand, error) {
	var refs []*pg.Node
	switch {
	case n.GetColumnRef() != nil:
		refs = []*pg.Node{n}
	case n.GetRowExpr() != nil:
		refs = n.GetRowExpr().Args
	default:
		return nil, fmt.Errorf("where clause: the left side of IN (SELECT ...) must be a column or a row of columns such as (a, b), not an expression")
	}
	out := make([]rawOperand, len(refs))
	for i, r := range refs {
		ref := r.GetColumnRef()
		if ref == nil {
			return nil, fmt.Errorf("where clause: the left side of IN (SELECT ...) must be a column or a row of columns such as (a, b), not an expression")
		}
		var err error
		if out[i], err = c.column(ref); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// subLinkForm accepts `x IN (SELECT ...)` and `x = ANY (SELECT ...)` and
// refuses the other kinds of subquery with what to write instead.
func subLinkForm(sl *pg.SubLink) error {
	if sl.SubLinkType == pg.SubLinkType_ANY_SUBLINK {
		if len(sl.OperName) == 0 || (len(sl.OperName) == 1 && sl.OperName[0].GetString_().GetSval() == "=") {
			return nil
		}
	}
	return subLinkUnsupported(sl)
}

// subLinkUnsupported names what is wrong with a subquery in a place or of a
// kind the matcher does not take.
func subLinkUnsupported(sl *pg.SubLink) error {
	switch sl.SubLinkType {
	case pg.SubLinkType_EXISTS_SUBLINK:
		return fmt.Errorf("where clause: EXISTS (SELECT ...) is not supported; write col IN (SELECT col FROM table WHERE ...)")
	case pg.SubLinkType_EXPR_SUBLINK:
		return fmt.Errorf("where clause: a scalar subquery such as col = (SELECT ...) is not supported; write col IN (SELECT col FROM table WHERE ...)")
	case pg.SubLinkType_ANY_SUBLINK:
		if len(sl.OperName) > 0 {
			return fmt.Errorf("where clause: %s ANY (SELECT ...) is not supported; only IN (SELECT ...) and = ANY (SELECT ...) are", subLinkOp(sl))
		}
	case pg.SubLinkType_ALL_SUBLINK:
		return fmt.Errorf("where clause: %s ALL (SELECT ...) is not supported; write NOT IN (SELECT ...) for <> ALL", subLinkOp(sl))
	}
	return fmt.Errorf("where clause: this kind of subquery is not supported; only col IN (SELECT col FROM table WHERE ...) is")
}

func subLinkOp(sl *pg.SubLink) string {
	var parts []string
	for _, n := range sl.OperName {
		parts = append(parts, n.GetString_().GetSval())
	}
	return strings.Join(parts, ".")
}

// plainSubselect checks that a subselect is a list of columns of one table
// with an optional WHERE, and nothing else.
func plainSubselect(sel *pg.SelectStmt) error {
	if sel == nil {
		return fmt.Errorf("where clause: the subquery must be a SELECT")
	}
	var extra []string
	if sel.Op != pg.SetOperation_SETOP_NONE {
		extra = append(extra, "UNION / INTERSECT / EXCEPT")
	}
	if len(sel.DistinctClause) > 0 {
		extra = append(extra, "DISTINCT")
	}
	if len(sel.GroupClause) > 0 || sel.HavingClause != nil {
		extra = append(extra, "GROUP BY / HAVING")
	}
	if len(sel.SortClause) > 0 {
		extra = append(extra, "ORDER BY")
	}
	if sel.LimitCount != nil || sel.LimitOffset != nil {
		extra = append(extra, "LIMIT / OFFSET")
	}
	if sel.WithClause != nil {
		extra = append(extra, "WITH")
	}
	if len(sel.WindowClause) > 0 {
		extra = append(extra, "WINDOW")
	}
	if len(sel.LockingClause) > 0 {
		extra = append(extra, "FOR UPDATE / SHARE")
	}
	if sel.IntoClause != nil {
		extra = append(extra, "INTO")
	}
	if len(sel.ValuesLists) > 0 {
		extra = append(extra, "VALUES")
	}
	if len(extra) > 0 {
		return fmt.Errorf("where clause: a subquery may only select columns of one table with an optional WHERE; %s is not supported", strings.Join(extra, ", "))
	}
	if len(sel.FromClause) != 1 || sel.FromClause[0].GetRangeVar() == nil {
		return fmt.Errorf("where clause: a subquery must read exactly one table (FROM table), without joins, functions or subqueries in FROM")
	}
	if rv := sel.FromClause[0].GetRangeVar(); !rv.Inh {
		return fmt.Errorf("where clause: FROM ONLY is not supported in a subquery")
	}
	if len(sel.TargetList) == 0 {
		return fmt.Errorf("where clause: the subquery selects no column")
	}
	for _, t := range sel.TargetList {
		if ref := t.GetResTarget().GetVal().GetColumnRef(); ref != nil {
			for _, f := range ref.Fields {
				if f.GetAStar() != nil {
					return fmt.Errorf("where clause: a subquery must name the column(s) it selects, not *")
				}
			}
		}
	}
	return nil
}

// typeName prints a column type for messages.
func typeName(t typ) string {
	if t.arr {
		return t.k.String() + "[]"
	}
	return t.k.String()
}

// subquerySQL gives every subquery of p (nested ones too) its SQL, with the
// parameters written in as quoted literals (typed by their place, as the
// matcher types them), and its ID. It parses where again, so the tree the
// compiler read is left as it was.
func (c *compiler) subquerySQL(where string, p *Predicate) error {
	tree, err := pg.Parse(wherePrefix + where)
	if err != nil {
		return fmt.Errorf("where clause does not parse: %v", err)
	}
	// The subqueries, in the order the compiler met them: depth first,
	// in order of appearance, which is the order of a walk.
	var links []*pg.SubLink
	walkNodes(tree, func(n *pg.Node) {
		if pr := n.GetParamRef(); pr != nil && pr.Number >= 1 && int(pr.Number) <= len(c.params) {
			n.Node = &pg.Node_AConst{AConst: &pg.A_Const{Val: &pg.A_Const_Sval{Sval: &pg.String{Sval: c.params[pr.Number-1]}}}}
		}
	})
	walkNodes(tree, func(n *pg.Node) {
		if sl := n.GetSubLink(); sl != nil {
			links = append(links, sl)
		}
	})
	// The compiled subqueries, by the position of their SubLink in the
	// source (the two trees have the same shape).
	bySource := map[int32]*Subquery{}
	for sl, n := range c.subs {
		bySource[sl.Location] = n.sub
	}
	for _, sl := range links {
		sub := bySource[sl.Location]
		if sub == nil {
			continue
		}
		sql, err := deparseSelect(tree, sl.Subselect)
		if err != nil {
			return fmt.Errorf("where clause: the subquery cannot be printed back as SQL: %w", err)
		}
		sub.SQL = sql
		if w := sl.Subselect.GetSelectStmt().GetWhereClause(); w != nil {
			if sub.WhereSQL, err = deparseWhere(tree, w); err != nil {
				return fmt.Errorf("where clause: the subquery's WHERE cannot be printed back as SQL: %w", err)
			}
		}
		h := sha256.New()
		fmt.Fprintf(h, "%s\x00", sql)
		for _, d := range sub.doms {
			fmt.Fprintf(h, "%d,", d)
		}
		sub.ID = "q" + hex.EncodeToString(h.Sum(nil))[:24]
	}
	dedupSubqueries(p)
	return nil
}

// dedupSubqueries makes p's lists name each result once: two subqueries
// with the same ID are the same dependency.
func dedupSubqueries(p *Predicate) {
	if p == nil || len(p.subs) == 0 {
		return
	}
	seen := map[string]*Subquery{}
	var out []*Subquery
	for _, s := range p.subs {
		if s.ID == "" {
			continue
		}
		if first, ok := seen[s.ID]; ok {
			*s = *first // one object per result, whichever node points at it
			continue
		}
		seen[s.ID] = s
		out = append(out, s)
		dedupSubqueries(s.Where)
	}
	p.subs = out
}

// deparseWhere prints a boolean expression of tree as SQL.
func deparseWhere(tree *pg.ParseResult, w *pg.Node) (string, error) {
	sel := &pg.SelectStmt{
		TargetList:  []*pg.Node{{Node: &pg.Node_ResTarget{ResTarget: &pg.ResTarget{Val: &pg.Node{Node: &pg.Node_AConst{AConst: &pg.A_Const{Val: &pg.A_Const_Ival{Ival: &pg.Integer{Ival: 1}}}}}}}}},
		WhereClause: w,
	}
	out, err := deparseSelect(tree, &pg.Node{Node: &pg.Node_SelectStmt{SelectStmt: sel}})
	if err != nil {
		return "", err
	}
	rest, ok := strings.CutPrefix(out, wherePrefix)
	if !ok {
		return "", fmt.Errorf("printed back as %q, not a SELECT 1 WHERE", out)
	}
	return rest, nil
}

// deparseSelect prints a subselect node of tree as SQL.
func deparseSelect(tree *pg.ParseResult, n *pg.Node) (string, error) {
	return pg.Deparse(&pg.ParseResult{Version: tree.Version, Stmts: []*pg.RawStmt{{Stmt: n}}})
}
