package snapshot

import (
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// sessionSettings make snapshot values print as pgoutput prints them (the
// replication connection uses the same). The pool adds search_path
// pg_catalog, pg_temp (consumers/pgpool); the query is wheresql.SelectAll.
var sessionSettings = fanout.TextSettings

// schemaKey tells apart shapes whose rows one query can read: one table,
// with the columns and types the shapes were defined with.
func schemaKey(s *fanout.Shape) string {
	var b strings.Builder
	if len(s.Tables) > 0 {
		// A shape with subqueries reads their results as of its snapshot
		// and tags its rows: it is read alone.
		return "\x00subqueries\x00" + s.Handle
	}
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
