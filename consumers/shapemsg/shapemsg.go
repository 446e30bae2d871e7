// Package shapemsg encodes rows as the messages of Electric's HTTP shape API
// (ELECTRIC_API.md): JSON strings, row keys and snapshot-row messages, by
// hand and without allocating. The snapshot writer (consumers/shapelog)
// stores each snapshot row already encoded, so the API serves a snapshot
// chunk by copying its file; the API (consumers/shapeapi) encodes changes
// with the same functions, so a row prints alike from both.
package shapemsg

import "unicode/utf8"

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string (invalid UTF-8 becomes U+FFFD, as
// encoding/json does; U+2028 and U+2029 are escaped).
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendEscaped(b, s)
	return append(b, '"')
}

// appendEscaped appends the inside of s's JSON string.
func appendEscaped[T string | []byte](b []byte, s T) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := decodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}

// decodeRune is utf8.DecodeRune over a string or bytes, without a copy.
func decodeRune[T string | []byte](s T) (rune, int) {
	if len(s) > utf8.UTFMax {
		s = s[:utf8.UTFMax]
	}
	var buf [utf8.UTFMax]byte
	n := copy(buf[:], s)
	return utf8.DecodeRune(buf[:n])
}

// AppendKeyPart appends one primary-key value of a row key,
// /"<value>" with a "/" inside the value doubled, or /_ for NULL (the raw
// key, not yet a JSON string).
func AppendKeyPart(b []byte, v *string) []byte {
	if v == nil {
		return append(b, '/', '_')
	}
	b = append(b, '/', '"')
	s := *v
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			b = append(b, '/', '/')
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, '"')
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
	relKey  []byte   // "schema"."table", raw
	names   [][]byte // `"col":` per column
	pk      []int    // indexes of the primary key columns in key order
	headers []byte   // `},"headers":{...}}`
	key     []byte
}

// NewSnapshotEncoder prepares an encoder for rows of schema.table with
// columns (the value order) keyed by pk, each a column of columns (a table
// without a primary key is keyed by all its columns: pass them all).
func NewSnapshotEncoder(schema, table string, columns, pk []string) *SnapshotEncoder {
	e := &SnapshotEncoder{relKey: AppendRelationKey(nil, schema, table)}
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

// Append appends the message of a row whose values, in the encoder's
// column order, are vals (nil: NULL).
func (e *SnapshotEncoder) Append(b []byte, vals []*string) []byte {
	e.key = append(e.key[:0], e.relKey...)
	for _, i := range e.pk {
		e.key = AppendKeyPart(e.key, vals[i])
	}
	b = append(b, `{"key":"`...)
	b = appendEscaped(b, e.key)
	b = append(b, `","value":{`...)
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.names[i]...)
		if v == nil {
			b = append(b, "null"...)
		} else {
			b = AppendString(b, *v)
		}
	}
	return append(b, e.headers...)
}
