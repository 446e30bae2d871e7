package shapes

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrTableNotServed is wrapped by the errors of CheckServed for a table
// that may not be served: clients get a 400.
var ErrTableNotServed = errors.New("table not served")

// TableAllowed is the part of the rule that needs no database: never a
// system schema (pg_catalog, information_schema, pg_toast and every other
// pg_* schema, which Postgres reserves), and, when allow is not empty, only
// a table it lists as "schema.table" or "schema.*".
func TableAllowed(schema, table string, allow []string) error {
	if strings.HasPrefix(schema, "pg_") || schema == "information_schema" {
		return fmt.Errorf("%w: %s.%s is in a system schema", ErrTableNotServed, schema, table)
	}
	if len(allow) == 0 {
		return nil
	}
	for _, a := range allow {
		s, t, _ := strings.Cut(a, ".")
		if s == schema && (t == "*" || t == table) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s.%s is not in the configured list of tables (config key api.tables)", ErrTableNotServed, schema, table)
}

// CheckServed is the whole rule for a table a client asks for (a shape's,
// later a subquery's): TableAllowed, and the table is in publication (so
// ingest streams its changes). A publication that does not exist yet
// (ingest creates it at its first start) is an error that is not
// ErrTableNotServed: the caller answers 503, not 400.
func CheckServed(ctx context.Context, conn *pgx.Conn, publication, schema, table string, allow []string) error {
	if err := TableAllowed(schema, table, allow); err != nil {
		return err
	}
	var pubExists, published bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1),
		EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
		publication, schema, table).Scan(&pubExists, &published)
	switch {
	case err != nil:
		return fmt.Errorf("read publication %s: %w", publication, err)
	case !pubExists:
		return fmt.Errorf("publication %s does not exist yet (ingest creates it; or check postgres.publication)", publication)
	case !published:
		return fmt.Errorf("%w: %s.%s is not in publication %s (ALTER PUBLICATION %s ADD TABLE %s to serve it)",
			ErrTableNotServed, schema, table, publication, publication, pgx.Identifier{schema, table}.Sanitize())
	}
	return nil
}
