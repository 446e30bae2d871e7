package shapeapi

import (
	"strings"

	"github.com/fanout/pipeline/consumers/shapemsg"
	"github.com/fanout/pipeline/fanout"
)

// Relation is what the messages of one shape say about its table.
type Relation struct {
	Schema, Table string
	// PK is the primary key, in key order; rows are keyed by it.
	PK []string
	// Columns orders a message's values: the shape's columns in table order.
	Columns []string
	// Full is the request's replica=full: updates carry the whole new row
	// and old_value, deletes the whole old row. Else (replica=default)
	// updates carry the key and the changed columns, deletes the key. Both
	// need the log's fanout.Change.Before; without it updates carry the
	// whole row and deletes the key. The replica is part of the request's
	// definition, so a handle (and its log index) has one.
	Full bool
}

func (r Relation) hasColumn(c string) bool {
	for _, k := range r.Columns {
		if k == c {
			return true
		}
	}
	return false
}

// NewRelation is the relation of a shape, for replica=default.
func NewRelation(s *fanout.Shape) Relation {
	schema, table := fanout.SplitTable(s.Table)
	var cols []string
	for _, c := range s.Schema {
		if s.Projected(c.Name) {
			cols = append(cols, c.Name)
		}
	}
	return Relation{Schema: schema, Table: table, PK: s.PrimaryKey, Columns: cols}
}

// Key is a row's message key: "schema"."table"/"<pk1>"/"<pk2>", with a
// "/" inside a value doubled and NULL written _, as Electric keys rows.
func (r Relation) Key(row fanout.Row) string {
	var buf [128]byte
	b := shapemsg.AppendRelationKey(buf[:0], r.Schema, r.Table)
	for _, c := range r.PK {
		b = shapemsg.AppendKeyPart(b, row[c])
	}
	return string(b)
}

// quoteIdent quotes a Postgres identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
