package match

import (
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/fanout/pipeline/fanout/pgtree"
)

// Budget bounds what a where clause may cost before it is compiled: ingest
// evaluates a clause that the equality index cannot serve on every change
// of its table, so its size is a cost paid per change, per shape. A zero
// field is no limit (operators' shapes, fanoutctl shape add).
type Budget struct {
	// MaxNodes bounds the expression nodes: operators, columns, function
	// calls, casts, CASE arms, and the items of an IN list (each one a
	// comparison per change). Other constants are not counted (they are
	// folded), nor the items of an array (MaxListItems bounds those).
	MaxNodes int
	// MaxDepth bounds how deeply expressions nest.
	MaxDepth int
	// MaxFunctions bounds the function calls.
	MaxFunctions int
	// MaxListItems bounds the items of one list: IN (...), ARRAY[...], or
	// an array literal '{...}' (in the clause or as a parameter).
	MaxListItems int
}

// BudgetLimit names which field of a Budget a clause exceeded.
type BudgetLimit int

const (
	LimitNodes BudgetLimit = iota
	LimitDepth
	LimitFunctions
	LimitListItems
)

// BudgetError is a clause over its Budget.
type BudgetError struct {
	Limit    BudgetLimit
	Max, Got int
}

func (e *BudgetError) Error() string {
	what := [...]string{"expression nodes", "levels of nesting", "function calls", "items in one list"}[e.Limit]
	return fmt.Sprintf("where clause: %d %s is over the limit of %d", e.Got, what, e.Max)
}

// Vet checks a new clause before it is compiled or stored: it stays within
// b, and every qualified name of an operator, function or type it holds is
// in pg_catalog. The matcher evaluates names by what they say without their
// schema, and the snapshot query runs with search_path pg_catalog, so
// another schema would make Postgres and the matcher disagree, or run a
// function a client chose. A clause that does not parse is left to Compile.
func Vet(where string, params []string, b Budget) error {
	if strings.TrimSpace(where) == "" {
		return nil
	}
	tree, err := pg.Parse(wherePrefix + where)
	if err != nil || len(tree.Stmts) != 1 {
		return nil
	}
	w := &vetter{b: b}
	if err := pgtree.Walk(tree.Stmts[0].GetStmt().GetSelectStmt().GetWhereClause(), w.visit); err != nil {
		return err
	}
	for _, p := range params {
		if err := w.items(arrayLiteralItems(p)); err != nil {
			return err
		}
	}
	return nil
}

type vetter struct {
	b                Budget
	nodes, functions int
}

func (w *vetter) visit(n *pg.Node, depth int) error {
	switch {
	case n.GetString_() != nil:
		return nil // a part of a name, counted with what it names
	case n.GetAConst() != nil:
		if s := n.GetAConst().GetSval(); s != nil {
			return w.items(arrayLiteralItems(s.Sval))
		}
		return nil
	case n.GetList() != nil:
		return w.items(len(n.GetList().Items))
	case n.GetAArrayExpr() != nil:
		if err := w.items(len(n.GetAArrayExpr().Elements)); err != nil {
			return err
		}
	case n.GetFuncCall() != nil:
		if err := qualified("function", n.GetFuncCall().Funcname); err != nil {
			return err
		}
		w.functions++
		if w.b.MaxFunctions > 0 && w.functions > w.b.MaxFunctions {
			return &BudgetError{Limit: LimitFunctions, Max: w.b.MaxFunctions, Got: w.functions}
		}
	case n.GetAExpr() != nil:
		e := n.GetAExpr()
		if err := qualified("operator", e.Name); err != nil {
			return err
		}
		if e.Kind == pg.A_Expr_Kind_AEXPR_IN {
			// Each item is a comparison on every change: a node (a
			// = ANY(array) compares against a prepared array, much cheaper).
			w.nodes += len(e.GetRexpr().GetList().GetItems())
		}
	case n.GetTypeCast() != nil:
		if err := qualified("type", n.GetTypeCast().GetTypeName().GetNames()); err != nil {
			return err
		}
	}
	if w.b.MaxDepth > 0 && depth > w.b.MaxDepth {
		return &BudgetError{Limit: LimitDepth, Max: w.b.MaxDepth, Got: depth}
	}
	w.nodes++
	if w.b.MaxNodes > 0 && w.nodes > w.b.MaxNodes {
		return &BudgetError{Limit: LimitNodes, Max: w.b.MaxNodes, Got: w.nodes}
	}
	return nil
}

func (w *vetter) items(n int) error {
	if w.b.MaxListItems > 0 && n > w.b.MaxListItems {
		return &BudgetError{Limit: LimitListItems, Max: w.b.MaxListItems, Got: n}
	}
	return nil
}

// qualified refuses a name qualified by another schema than pg_catalog.
func qualified(what string, name []*pg.Node) error {
	if len(name) < 2 {
		return nil
	}
	parts := pgtree.Names(name)
	if len(parts) == 2 && parts[0] == "pg_catalog" {
		return nil
	}
	return fmt.Errorf("where clause: %s %s: only pg_catalog may qualify a %s (write it without a schema)", what, strings.Join(parts, "."), what)
}

// arrayLiteralItems is about how many items an array literal '{a,b,...}'
// holds (its commas outside quotes and nested braces, plus one); 0 for
// text that is not one.
func arrayLiteralItems(s string) int {
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return 0
	}
	n, depth, quoted := 1, 0, false
	for i := 1; i < len(s)-1; i++ {
		switch c := s[i]; {
		case c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '{':
			depth++
		case c == '}':
			depth--
		case c == ',' && depth == 0:
			n++
		}
	}
	return n
}
