package pgpool

import (
	"context"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout"
)

// TextRows runs sql (no parameters) on conn, in its open transaction, and
// returns its rows in Postgres text form by column name (NULL is nil): how
// snapshots and subset reads load the results of a shape's subqueries.
func TextRows(ctx context.Context, conn *pgconn.PgConn, sql string) ([]fanout.Row, error) {
	rr := conn.ExecParams(ctx, sql, nil, nil, nil, nil)
	var out []fanout.Row
	for rr.NextRow() {
		fields := rr.FieldDescriptions()
		row := make(fanout.Row, len(fields))
		for i, v := range rr.Values() {
			if v == nil {
				row[fields[i].Name] = nil
				continue
			}
			s := string(v)
			row[fields[i].Name] = &s
		}
		out = append(out, row)
	}
	if _, err := rr.Close(); err != nil {
		return nil, err
	}
	return out, nil
}
