package wheresql

import (
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
)

// Select is the query that reads shape s's rows: every column of the
// table's schema (the matcher needs them to post-filter; the projection is
// applied in Go), with the where clause printed again from its parse tree
// and its enum casts qualified by types. It returns the column names in
// query order. The SQL filter only narrows what is read; membership is
// decided by the compiled matcher. The snapshot takes it; shapeapi
// prepares it to validate a new shape.
func Select(s *fanout.Shape, types TypeNames) (string, []string, error) {
	q, cols := selectFrom(s)
	if strings.TrimSpace(s.Where) != "" {
		where, err := Deparse(s.Where, types)
		if err != nil {
			return "", nil, err
		}
		q += " WHERE (" + where + ")"
	}
	return q, cols, nil
}

// SelectAll is the query that reads the rows of shapes of one table and
// one schema at once (a snapshot group): Select's columns, filtered by the
// union of their where clauses (Union). params are every shape's
// parameters in order, as the union numbers them.
func SelectAll(shapes []*fanout.Shape, types TypeNames) (q string, params [][]byte, cols []string, err error) {
	q, cols = selectFrom(shapes[0])
	clauses := make([]Clause, len(shapes))
	for i, s := range shapes {
		clauses[i] = Clause{Where: s.Where, Params: len(s.Params)}
		for _, p := range s.Params {
			params = append(params, []byte(p))
		}
	}
	where, err := Union(clauses, types)
	if err != nil {
		return "", nil, nil, err
	}
	if where != "" {
		q += " WHERE (" + where + ")"
	}
	return q, params, cols, nil
}

// selectFrom is SELECT <every column of s's schema> FROM <its table>, and
// the column names in that order.
func selectFrom(s *fanout.Shape) (string, []string) {
	cols := make([]string, len(s.Schema))
	quoted := make([]string, len(s.Schema))
	for i, c := range s.Schema {
		cols[i] = c.Name
		quoted[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	schema, name := fanout.SplitTable(s.Table)
	return "SELECT " + strings.Join(quoted, ", ") + " FROM " + pgx.Identifier{schema, name}.Sanitize(), cols
}
