package shapeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ColumnInfo is what the electric-schema header says of a column.
type ColumnInfo struct {
	Name string
	// Type is pg_type.typname; for an array, the element's typname.
	Type    string
	Dims    int
	NotNull bool
}

// LoadColumns reads a table's columns from pg_catalog (names as
// parameters, never spliced into SQL).
func LoadColumns(ctx context.Context, conn *pgx.Conn, schema, table string) ([]ColumnInfo, error) {
	rows, err := conn.Query(ctx, `SELECT a.attname,
			CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN e.typname ELSE t.typname END,
			CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN greatest(a.attndims, 1) ELSE 0 END,
			a.attnotnull
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_type t ON t.oid = a.atttypid
		LEFT JOIN pg_type e ON e.oid = t.typelem
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, schema, table)
	if err != nil {
		return nil, fmt.Errorf("read the column types of %s.%s: %w", schema, table, err)
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ColumnInfo, error) {
		var c ColumnInfo
		err := r.Scan(&c.Name, &c.Type, &c.Dims, &c.NotNull)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the column types of %s.%s: %w", schema, table, err)
	}
	if len(cols) == 0 {
		return nil, errors.New("table has no columns")
	}
	return cols, nil
}

// SchemaHeader is the electric-schema header: the selected columns (all
// when selected is empty) with type, dims, not_null and pk_index.
func SchemaHeader(cols []ColumnInfo, selected, pk []string) string {
	type col struct {
		Type    string `json:"type"`
		Dims    int    `json:"dims"`
		PKIndex *int   `json:"pk_index,omitempty"`
		NotNull bool   `json:"not_null,omitempty"`
	}
	keep := map[string]bool{}
	for _, c := range selected {
		keep[c] = true
	}
	out := map[string]col{}
	for _, c := range cols {
		if len(selected) > 0 && !keep[c.Name] {
			continue
		}
		v := col{Type: c.Type, Dims: c.Dims, NotNull: c.NotNull}
		for i, k := range pk {
			if k == c.Name {
				v.PKIndex = &i
			}
		}
		out[c.Name] = v
	}
	b, _ := json.Marshal(out)
	return string(b)
}
