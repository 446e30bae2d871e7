package wheresql

import (
	"errors"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Clause is one shape's where clause in a union: its text (empty: every
// row) and how many $n parameters it was given.
type Clause struct {
	Where  string
	Params int
}

// Union prints one where clause that every row satisfying any of clauses
// satisfies, for one query that reads the rows of several shapes: their
// OR, each clause's parameters renumbered after those of the clauses
// before it (the second clause's $1 is $k+1 when the first has k), so the
// query takes every clause's parameters in order. Clauses that are exactly
// `column = constant` (or `$n`) on one column, with constants of one kind,
// are merged into one `column IN (...)`, which Postgres evaluates with one
// hash lookup per row however many shapes it serves. It returns "" when a
// clause is empty: the union is the whole table.
//
// The union only narrows what the query reads: which shapes a row belongs
// to is still decided by each shape's matcher. types qualifies the type
// names of casts, as Deparse's.
func Union(clauses []Clause, types TypeNames) (string, error) {
	var (
		args  []*pg.Node
		lists = map[inKey]*pg.A_Expr{} // merged equalities by column and constant kind
		shift int32
	)
	for _, c := range clauses {
		if strings.TrimSpace(c.Where) == "" {
			return "", nil
		}
		tree, err := parseClause(c.Where)
		if err != nil {
			return "", err
		}
		where := tree.Stmts[0].GetStmt().GetSelectStmt().GetWhereClause()
		types.qualify(where)
		qualifyTables(where)
		renumberParams(where.ProtoReflect(), shift)
		shift += int32(c.Params)
		if col, val, kind, ok := equality(where); ok {
			k := inKey{col, kind}
			if in := lists[k]; in != nil {
				in.Rexpr.GetList().Items = append(in.Rexpr.GetList().Items, val)
				continue
			}
			n := pg.MakeAExprNode(pg.A_Expr_Kind_AEXPR_IN, []*pg.Node{pg.MakeStrNode("=")},
				pg.MakeColumnRefNode([]*pg.Node{pg.MakeStrNode(col)}, -1), pg.MakeListNode([]*pg.Node{val}), -1)
			lists[k] = n.GetAExpr()
			args = append(args, n)
			continue
		}
		args = append(args, where)
	}
	if len(args) == 0 {
		return "", errors.New("a union of no where clauses")
	}
	root := args[0]
	if len(args) > 1 {
		root = pg.MakeBoolExprNode(pg.BoolExprType_OR_EXPR, args, -1)
	}
	tree, err := pg.Parse(Prefix + "true")
	if err != nil {
		return "", err
	}
	tree.Stmts[0].GetStmt().GetSelectStmt().WhereClause = root
	return printClause(tree, "union of where clauses")
}

// inKey groups equalities that may share one IN list: one column, and
// constants Postgres types alike (a list of mixed kinds could resolve to
// another type than each equality alone).
type inKey struct {
	col  string
	kind string
}

// equality recognizes `column = constant` or `constant = column`, with an
// integer, decimal, string or boolean literal or a $n parameter (a string
// literal and a parameter are both of unknown type until resolved against
// the column, so they share a kind).
func equality(n *pg.Node) (col string, val *pg.Node, kind string, ok bool) {
	e := n.GetAExpr()
	if e == nil || e.Kind != pg.A_Expr_Kind_AEXPR_OP || len(e.Name) != 1 || e.Name[0].GetString_().GetSval() != "=" {
		return "", nil, "", false
	}
	l, r := e.Lexpr, e.Rexpr
	if columnName(l) == "" {
		l, r = r, l
	}
	col = columnName(l)
	if col == "" {
		return "", nil, "", false
	}
	if r.GetParamRef() != nil {
		return col, r, "unknown", true
	}
	c := r.GetAConst()
	switch {
	case c == nil || c.Isnull:
		return "", nil, "", false
	case c.GetIval() != nil:
		kind = "integer"
	case c.GetFval() != nil:
		kind = "decimal"
	case c.GetSval() != nil:
		kind = "unknown"
	case c.GetBoolval() != nil:
		kind = "boolean"
	default:
		return "", nil, "", false
	}
	return col, r, kind, true
}

// columnName is the name of a bare column reference, "" for anything else.
func columnName(n *pg.Node) string {
	ref := n.GetColumnRef()
	if ref == nil || len(ref.Fields) != 1 {
		return ""
	}
	return ref.Fields[0].GetString_().GetSval()
}

// renumberParams adds shift to the number of every $n parameter in m.
func renumberParams(m protoreflect.Message, shift int32) {
	if shift == 0 {
		return
	}
	if p, ok := m.Interface().(*pg.ParamRef); ok {
		p.Number += shift
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() != protoreflect.MessageKind:
		case fd.IsList():
			for i := 0; i < v.List().Len(); i++ {
				renumberParams(v.List().Get(i).Message(), shift)
			}
		case !fd.IsMap():
			renumberParams(v.Message(), shift)
		}
		return true
	})
}
