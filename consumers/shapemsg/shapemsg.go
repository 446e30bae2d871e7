// Package shapemsg encodes rows as the messages of Electric's HTTP shape API
// (ELECTRIC_API.md): JSON strings, row keys and snapshot-row messages, by
// hand and without allocating. The snapshot writer (consumers/shapelog)
// stores each snapshot row already encoded, so the API serves a snapshot
// chunk by copying its file; the API (consumers/shapeapi) encodes changes
// with the same functions, so a row prints alike from both.
package shapemsg

import "github.com/fanout/pipeline/fanout/jsontext"

// AppendString appends s as a JSON string (see jsontext.AppendString).
func AppendString(b []byte, s string) []byte { return jsontext.AppendString(b, s) }

// AppendKeyPart appends one primary-key value of a row key,
// /"<value>" with a "/" inside the value doubled, or /_ for NULL (the raw
// key, not yet a JSON string).
func AppendKeyPart(b []byte, v *string) []byte {
	if v == nil {
		return append(b, '/', '_')
	}
	return appendKeyValue(b, *v)
}

// AppendRelationKey appends "schema"."table", the start of every row key
// (the raw key, not yet a JSON string).
func AppendRelationKey(b []byte, schema, table string) []byte {
	b = appendIdent(b, schema)
	b = append(b, '.')
	return appendIdent(b, table)
}

func appendIdent(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' {
			b = append(b, '"', '"')
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, '"')
}

// AppendSnapshotHeaders appends the headers object of a snapshot row:
// {"operation":"insert","relation":["schema","table"]}.
func AppendSnapshotHeaders(b []byte, schema, table string) []byte {
	b = append(b, `{"operation":"insert","relation":[`...)
	b = AppendString(b, schema)
	b = append(b, ',')
	b = AppendString(b, table)
	return append(b, "]}"...)
}

// SnapshotEncoder encodes the rows of one relation as snapshot-row
// messages, {"key":...,"value":{...},"headers":{"operation":"insert",...}},
// with the values in its columns' order. It reuses its buffers: one
// encoder per goroutine.
type SnapshotEncoder struct {
	keyStart []byte   // {"key":" and "schema"."table", escaped
	names    [][]byte // `"col":` per column
	pk       []int    // indexes of the primary key columns in key order
	headers  []byte   // `},"headers":{...}}`
	key      []byte
}

// NewSnapshotEncoder prepares an encoder for rows of schema.table with
// columns (the value order) keyed by pk, each a column of columns (a table
// without a primary key is keyed by all its columns: pass them all).
func NewSnapshotEncoder(schema, table string, columns, pk []string) *SnapshotEncoder {
	e := &SnapshotEncoder{keyStart: jsontext.AppendEscaped([]byte(`{"key":"`), AppendRelationKey(nil, schema, table))}
	for _, c := range columns {
		e.names = append(e.names, append(AppendString(nil, c), ':'))
	}
	for _, k := range pk {
		for i, c := range columns {
			if c == k {
				e.pk = append(e.pk, i)
				break
			}
		}
	}
	e.headers = AppendSnapshotHeaders(append([]byte(nil), `},"headers":`...), schema, table)
	e.headers = append(e.headers, '}')
	return e
}

// KeyColumns reports whether every primary key column is among the columns.
func (e *SnapshotEncoder) KeyColumns(pk []string) bool { return len(e.pk) == len(pk) }

// AppendMeta is Append for a shape with subqueries: the headers also carry
// the row's tags and active_conditions (fanout/match/dnf.go).
func (e *SnapshotEncoder) AppendMeta(b []byte, vals [][]byte, tags []string, active []bool) []byte {
	b = e.Append(b, vals)
	b = b[:len(b)-2] // the headers' and the message's closing braces
	return append(AppendRowMeta(b, tags, nil, active), "}}"...)
}

// AppendRowMeta appends the header fields of a row of a shape with
// subqueries: ,"tags":[...], ,"removed_tags":[...] (when any) and
// ,"active_conditions":[...].
func AppendRowMeta(b []byte, tags, removed []string, active []bool) []byte {
	list := func(name string, l []string) {
		b = append(b, name...)
		b = append(b, '[')
		for i, t := range l {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendString(b, t)
		}
		b = append(b, ']')
	}
	list(`,"tags":`, tags)
	if len(removed) > 0 {
		list(`,"removed_tags":`, removed)
	}
	b = append(b, `,"active_conditions":[`...)
	for i, a := range active {
		if i > 0 {
			b = append(b, ',')
		}
		if a {
			b = append(b, "true"...)
		} else {
			b = append(b, "false"...)
		}
	}
	return append(b, ']')
}

// Append appends the message of a row whose values, in the encoder's
// column order, are vals (nil: NULL), in Postgres text format. It reads
// vals and keeps nothing of them.
func (e *SnapshotEncoder) Append(b []byte, vals [][]byte) []byte {
	b = append(b, e.keyStart...)
	for _, i := range e.pk {
		// The key part is escaped as a whole: its quotes become \".
		e.key = appendKeyPartBytes(e.key[:0], vals[i])
		b = jsontext.AppendEscaped(b, e.key)
	}
	b = append(b, `","value":{`...)
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.names[i]...)
		if v == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, '"')
			b = jsontext.AppendEscaped(b, v)
			b = append(b, '"')
		}
	}
	return append(b, e.headers...)
}

// appendKeyPartBytes is AppendKeyPart of a value given as bytes.
func appendKeyPartBytes(b, v []byte) []byte {
	if v == nil {
		return append(b, '/', '_')
	}
	return appendKeyValue(b, v)
}

// appendKeyValue appends /"<value>" with a "/" inside the value doubled.
func appendKeyValue[T string | []byte](b []byte, s T) []byte {
	b = append(b, '/', '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			b = append(b, '/', '/')
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, '"')
}
