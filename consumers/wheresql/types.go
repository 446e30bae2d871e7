package wheresql

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/pgtree"
)

// TypeNames maps a type name as a clause may write it unqualified to its
// schema and name: a cast to a table's enum type ('ok'::mood) resolves in
// the matcher by the columns' types, and must resolve to the same type in
// a session whose search_path holds only pg_catalog.
type TypeNames map[string][2]string

// qualify rewrites the unqualified type names of the casts under where.
func (t TypeNames) qualify(where *pg.Node) {
	if len(t) == 0 || where == nil {
		return
	}
	pgtree.Walk(where, func(n *pg.Node, _ int) error {
		tc := n.GetTypeCast()
		if tc == nil || tc.TypeName == nil || len(tc.TypeName.Names) != 1 {
			return nil
		}
		if q, ok := t[tc.TypeName.Names[0].GetString_().GetSval()]; ok {
			tc.TypeName.Names = []*pg.Node{pg.MakeStrNode(q[0]), pg.MakeStrNode(q[1])}
		}
		return nil
	})
}

// EnumTypes reads the schema and name of the enum types of cols, keyed as
// the matcher names them (a column's type as format_type printed it when
// the shape was added, without []).
func EnumTypes(ctx context.Context, conn *pgx.Conn, cols []fanout.Column) (TypeNames, error) {
	byOID := map[uint32]string{}
	var oids []uint32
	for _, c := range cols {
		if c.Enum == nil {
			continue
		}
		oid := c.OID
		if c.ElemOID != 0 {
			oid = c.ElemOID
		}
		if _, seen := byOID[oid]; !seen {
			oids = append(oids, oid)
		}
		byOID[oid] = strings.TrimSuffix(c.Type, "[]")
	}
	if len(oids) == 0 {
		return nil, nil
	}
	rows, err := conn.Query(ctx, `SELECT t.oid, n.nspname, t.typname FROM pg_catalog.pg_type t
		JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = ANY($1)`, oids)
	if err != nil {
		return nil, fmt.Errorf("read the enum types of the table: %w", err)
	}
	out := TypeNames{}
	var oid uint32
	var schema, name string
	_, err = pgx.ForEachRow(rows, []any{&oid, &schema, &name}, func() error {
		out[byOID[oid]] = [2]string{schema, name}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the enum types of the table: %w", err)
	}
	return out, nil
}
