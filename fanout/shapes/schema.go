package shapes

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
)

// LoadSchema reads a table's columns (in column order) and primary key (in
// key order) from pg_catalog. table is "schema.table" or a bare name in public.
func LoadSchema(ctx context.Context, conn *pgx.Conn, table string) (cols []fanout.Column, pk []string, err error) {
	schema, name := fanout.SplitTable(table)
	qualified := schema + "." + name
	var relid uint32
	var relkind string
	err = conn.QueryRow(ctx, `SELECT c.oid, c.relkind::text FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, schema, name).Scan(&relid, &relkind)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("table %s does not exist (names are case-sensitive; write schema.table)", qualified)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read the schema of %s: %w", qualified, err)
	}
	if relkind != "r" && relkind != "p" {
		return nil, nil, fmt.Errorf("%s is not a table (relkind %q): shapes need a table that logical replication publishes", qualified, relkind)
	}

	// The element type of an array, and the labels of an enum (or of an enum
	// array's element) in declared order: the matcher orders enums by them.
	rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, NULL), a.atttypid,
		CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END::oid,
		COALESCE((SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e
			WHERE e.enumtypid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END), '{}')
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, relid)
	if err != nil {
		return nil, nil, fmt.Errorf("read the columns of %s: %w", qualified, err)
	}
	for rows.Next() {
		var c fanout.Column
		var labels []string
		if err := rows.Scan(&c.Name, &c.Type, &c.OID, &c.ElemOID, &labels); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("read the columns of %s: %w", qualified, err)
		}
		if len(labels) > 0 {
			c.Enum = &labels
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read the columns of %s: %w", qualified, err)
	}

	rows, err = conn.Query(ctx, `SELECT a.attname FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord`, relid)
	if err != nil {
		return nil, nil, fmt.Errorf("read the primary key of %s: %w", qualified, err)
	}
	pk, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, fmt.Errorf("read the primary key of %s: %w", qualified, err)
	}
	if len(pk) == 0 {
		return nil, nil, fmt.Errorf("table %s has no primary key; shapes key their rows by it (ALTER TABLE %s ADD PRIMARY KEY (...))", qualified, qualified)
	}
	return cols, pk, nil
}
