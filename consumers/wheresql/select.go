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
	cols := make([]string, len(s.Schema))
	quoted := make([]string, len(s.Schema))
	for i, c := range s.Schema {
		cols[i] = c.Name
		quoted[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	schema, name := fanout.SplitTable(s.Table)
	q := "SELECT " + strings.Join(quoted, ", ") + " FROM " + pgx.Identifier{schema, name}.Sanitize()
	if strings.TrimSpace(s.Where) != "" {
		where, err := Deparse(s.Where, types)
		if err != nil {
			return "", nil, err
		}
		q += " WHERE (" + where + ")"
	}
	return q, cols, nil
}
