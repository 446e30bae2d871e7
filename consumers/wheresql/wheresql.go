// Package wheresql prints a shape's where clause back as SQL from its
// Postgres parse tree, so that the text a user sent never reaches a query
// as written (a comment, a second statement or a dangling quote cannot),
// and builds the queries that read a shape's rows (select.go). Those reads
// run with search_path pg_catalog, pg_temp (consumers/pgpool): the only
// names a clause may resolve outside pg_catalog, its enum types and the
// tables its subqueries read, are printed qualified (types.go,
// qualifyTables).
package wheresql

import (
	"errors"
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"

	"github.com/fanout/pipeline/fanout/pgtree"
)

// Prefix is the statement a clause is parsed in, as the matcher and
// Electric parse it; a ParseError's Location counts from its start.
const Prefix = "SELECT 1 WHERE "

// ParseError is a clause the Postgres parser refuses. Callers that answer
// in another wording (Electric's "At location N: ...") read its fields.
type ParseError struct {
	Location int    // 0-based position of the error in Prefix + clause
	Message  string // the parser's message, e.g. `syntax error at or near "="`
	err      *parser.Error
}

func (e *ParseError) Error() string {
	return "where clause does not parse: " + e.Message
}

func (e *ParseError) Unwrap() error { return e.err }

// Deparse parses where as `SELECT 1 WHERE <where>` and prints the tree
// again, without the prefix. A clause that does not parse is a
// *ParseError when the parser located it. types qualifies the type names
// of casts (types.go): the reads run with search_path pg_catalog.
func Deparse(where string, types ...TypeNames) (string, error) {
	tree, err := parseClause(where)
	if err != nil {
		return "", err
	}
	clause := tree.Stmts[0].GetStmt().GetSelectStmt().GetWhereClause()
	for _, t := range types {
		t.qualify(clause)
	}
	qualifyTables(clause)
	return printClause(tree, "where clause")
}

// printClause prints tree, a `SELECT 1 WHERE ...`, back as SQL without the
// prefix; what names the clause in errors.
func printClause(tree *pg.ParseResult, what string) (string, error) {
	out, err := pg.Deparse(tree)
	if err != nil {
		return "", fmt.Errorf("%s cannot be printed back as SQL: %w", what, err)
	}
	rest, ok := strings.CutPrefix(out, Prefix)
	if !ok {
		return "", fmt.Errorf("%s printed back as %q, not a SELECT 1 WHERE", what, out)
	}
	return rest, nil
}

// qualifyTables names the schema of every table a subquery of where reads
// without one: public, as the matcher resolves it (match.SubqueryTables),
// since the reads' search_path holds pg_catalog only.
func qualifyTables(where *pg.Node) {
	pgtree.Walk(where, func(n *pg.Node, _ int) error {
		if rv := n.GetRangeVar(); rv != nil && rv.Schemaname == "" {
			rv.Schemaname = "public"
		}
		return nil
	})
}

// parseClause parses where as `SELECT 1 WHERE <where>`: one statement
// with a where clause.
func parseClause(where string) (*pg.ParseResult, error) {
	tree, err := pg.Parse(Prefix + where)
	if err != nil {
		var pe *parser.Error
		if errors.As(err, &pe) {
			return nil, &ParseError{Location: max(pe.Cursorpos-1, 0), Message: pe.Message, err: pe}
		}
		return nil, fmt.Errorf("where clause does not parse: %w", err)
	}
	if len(tree.Stmts) != 1 || tree.Stmts[0].GetStmt().GetSelectStmt().GetWhereClause() == nil {
		return nil, errors.New("where clause is not one boolean expression")
	}
	return tree, nil
}
