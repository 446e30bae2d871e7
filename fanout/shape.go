package fanout

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Shape is a filtered view of one table. Its definition is stored as JSON in
// the ShapesBucket under its handle, so every service watches the same truth.
type Shape struct {
	Handle string `json:"handle"`
	// Table is schema-qualified: "public.items".
	Table string `json:"table"`
	// Where is a SQL boolean expression over the table's columns; empty means every row.
	Where string `json:"where,omitempty"`
	// Params are the values of the where clause's $1, $2, ... placeholders
	// (Params[0] is $1), as text, typed by the context they appear in.
	Params []string `json:"params,omitempty"`
	// Columns is the projection; empty means every column. It always
	// includes the primary key.
	Columns []string `json:"columns,omitempty"`
	// PrimaryKey names the key columns, in key order, read from the live
	// schema when the shape was added. Rows in a shape log are keyed by it.
	PrimaryKey []string `json:"primary_key"`
	// Schema is the table's columns and types when the shape was added; the
	// where clause was type-checked against it.
	Schema []Column `json:"schema"`
	// Tables are the tables the where clause's subqueries read
	// (`col IN (SELECT ...)`), with their key and columns when the shape
	// was added; the subqueries were type-checked against them. Empty for
	// a clause without subqueries.
	Tables    []TableSchema `json:"tables,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
}

// TableSchema is a table a shape's subqueries read.
type TableSchema struct {
	// Table is schema-qualified: "public.members".
	Table      string   `json:"table"`
	PrimaryKey []string `json:"primary_key"`
	Schema     []Column `json:"schema"`
}

// HasSubqueries reports whether the shape's where clause reads other
// tables through subqueries.
func (s *Shape) HasSubqueries() bool { return len(s.Tables) > 0 }

// Column is one column of a shape's table.
type Column struct {
	Name string `json:"name"`
	// Type is the Postgres type name as format_type prints it without modifiers ("integer", "text").
	Type string `json:"type"`
	// OID is the type's OID, as pgoutput reports it.
	OID uint32 `json:"oid"`
	// ElemOID is an array column's element type OID (0 for other columns).
	ElemOID uint32 `json:"elem_oid,omitempty"`
	// Enum holds the labels of an enum column's type (or of an enum array's
	// element type) in declared order (pg_enum.enumsortorder): enums order by
	// it. A pointer, so that Column stays comparable with ==.
	Enum *[]string `json:"enum,omitempty"`
}

// ValidateHandle checks that a handle is URL-safe and a single NATS subject
// token: 1-64 characters of a-z, 0-9, '_' or '-', the first a letter or
// digit. Consumers check every fragment's handle, so this is a loop, not a
// regular expression (which was 40% of reading a message).
func ValidateHandle(h string) error {
	ok := len(h) >= 1 && len(h) <= 64
	for i := 0; ok && i < len(h); i++ {
		c := h[i]
		ok = 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '_' || c == '-')
	}
	if !ok {
		return fmt.Errorf("shape handle %q is not 1-64 characters of a-z, 0-9, '_' or '-'", h)
	}
	return nil
}

// NewHandle returns a fresh random handle: "s" and 16 hex digits.
func NewHandle() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return "s" + hex.EncodeToString(b[:])
}

// SplitTable splits "schema.table"; a bare name is in schema public.
func SplitTable(table string) (schema, name string) {
	if s, n, ok := strings.Cut(table, "."); ok {
		return s, n
	}
	return "public", table
}

// QualifiedTable normalises a table name to "schema.table".
func QualifiedTable(table string) string {
	s, n := SplitTable(table)
	return s + "." + n
}

// Projected reports whether the shape keeps column c.
func (s *Shape) Projected(c string) bool {
	if len(s.Columns) == 0 {
		return true
	}
	for _, k := range s.Columns {
		if k == c {
			return true
		}
	}
	return false
}

// Validate checks the parts of a definition that need no database.
func (s *Shape) Validate() error {
	if err := ValidateHandle(s.Handle); err != nil {
		return err
	}
	if s.Table == "" || strings.Count(s.Table, ".") != 1 {
		return fmt.Errorf("shape %s: table %q is not schema-qualified (schema.table)", s.Handle, s.Table)
	}
	if len(s.PrimaryKey) == 0 {
		return fmt.Errorf("shape %s: table %s has no primary key; shapes need one to key their rows", s.Handle, s.Table)
	}
	for _, k := range s.PrimaryKey {
		if !s.Projected(k) {
			return fmt.Errorf("shape %s: --columns must include the primary key column %q", s.Handle, k)
		}
	}
	return nil
}

// DecodeShape reads a ShapesBucket value strictly.
func DecodeShape(data []byte) (*Shape, error) {
	var s Shape
	if err := decodeStrict(data, &s); err != nil {
		return nil, fmt.Errorf("shape definition is not valid JSON of a shape: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Encode is the ShapesBucket value of s.
func (s *Shape) Encode() []byte {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a Shape always marshals
	}
	return b
}
