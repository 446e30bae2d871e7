package pgtree

import (
	"reflect"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

func TestWalkVisitsEveryNodeWithItsDepth(t *testing.T) {
	tree, err := pg.Parse("SELECT 1 WHERE a = 1 AND lower(b) = 'x'")
	if err != nil {
		t.Fatal(err)
	}
	where := tree.Stmts[0].GetStmt().GetSelectStmt().GetWhereClause()
	var kinds []string
	maxDepth := 0
	err = Walk(where, func(n *pg.Node, depth int) error {
		maxDepth = max(maxDepth, depth)
		switch {
		case n.GetFuncCall() != nil:
			kinds = append(kinds, "func "+Names(n.GetFuncCall().Funcname)[0])
		case n.GetColumnRef() != nil:
			kinds = append(kinds, "col")
		case n.GetAConst() != nil:
			kinds = append(kinds, "const")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// AND > lower(b) = 'x' > lower(b) > b > "b": the column's name (a
	// String node, as operator and function names are) is 5 deep.
	if want := []string{"col", "const", "func lower", "col", "const"}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("visited %v, want %v", kinds, want)
	}
	if maxDepth != 5 {
		t.Errorf("deepest node at %d, want 5", maxDepth)
	}
	n := 0
	Walk(where, func(node *pg.Node, _ int) error {
		n++
		if node.GetFuncCall() != nil {
			return SkipChildren
		}
		return nil
	})
	if n == 0 {
		t.Fatal("nothing visited")
	}
}
