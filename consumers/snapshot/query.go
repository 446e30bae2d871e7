package snapshot

import (
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/consumers/wheresql"
	"github.com/fanout/pipeline/fanout"
)

// sessionSettings make snapshot values print as pgoutput prints them (the
// replication connection uses the same).
var sessionSettings = fanout.TextSettings

// selectSQL is the snapshot query of shapes of one table and one schema:
// every column of the table's schema (the matchers need them to
// post-filter; each shape's projection is applied in Go), filtered by the
// union of their where clauses (wheresql.Union), rendered again from their
// Postgres parse trees, so the users' text never reaches the SQL as written.
// params are every shape's parameters in order, as the union numbers them.
// The SQL filter only narrows what is read; membership is decided by each
// shape's compiled matcher.
func selectSQL(shapes []*fanout.Shape) (q string, params [][]byte, cols []string, err error) {
	s := shapes[0]
	cols = make([]string, len(s.Schema))
	quoted := make([]string, len(s.Schema))
	for i, c := range s.Schema {
		cols[i] = c.Name
		quoted[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	schema, name := fanout.SplitTable(s.Table)
	q = "SELECT " + strings.Join(quoted, ", ") + " FROM " + pgx.Identifier{schema, name}.Sanitize()
	clauses := make([]wheresql.Clause, len(shapes))
	for i, s := range shapes {
		clauses[i] = wheresql.Clause{Where: s.Where, Params: len(s.Params)}
		for _, p := range s.Params {
			params = append(params, []byte(p))
		}
	}
	where, err := wheresql.Union(clauses)
	if err != nil {
		return "", nil, nil, err
	}
	if where != "" {
		q += " WHERE (" + where + ")"
	}
	return q, params, cols, nil
}

// schemaKey tells apart shapes whose rows one query can read: one table,
// with the columns and types the shapes were defined with.
func schemaKey(s *fanout.Shape) string {
	var b strings.Builder
	b.WriteString(s.Table)
	for _, c := range s.Schema {
		b.WriteString("\x00" + c.Name + "\x00" + c.Type)
	}
	return b.String()
}

// quoteLiteral quotes s as an SQL string literal whatever
// standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, `'`, `''`).Replace(s) + "'"
}
