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

// selectSQL is the snapshot query of s: every column of the table's schema
// (the matcher needs them to post-filter; the projection is applied in Go),
// with the where clause rendered again from its Postgres parse tree, so the
// user's text never reaches the SQL as written. The SQL filter only narrows
// what is read; membership is decided by the compiled matcher.
func selectSQL(s *fanout.Shape) (string, []string, error) {
	cols := make([]string, len(s.Schema))
	quoted := make([]string, len(s.Schema))
	for i, c := range s.Schema {
		cols[i] = c.Name
		quoted[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	schema, name := fanout.SplitTable(s.Table)
	q := "SELECT " + strings.Join(quoted, ", ") + " FROM " + pgx.Identifier{schema, name}.Sanitize()
	if strings.TrimSpace(s.Where) != "" {
		where, err := wheresql.Deparse(s.Where)
		if err != nil {
			return "", nil, err
		}
		q += " WHERE (" + where + ")"
	}
	return q, cols, nil
}
