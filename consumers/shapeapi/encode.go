package shapeapi

import (
	"strconv"

	"github.com/fanout/pipeline/consumers/shapemsg"
	"github.com/fanout/pipeline/fanout"
)

// appendMessage appends a row message, {"key":...,"value":{...},"headers":{...}},
// by hand: the initial sync and every live response go through here, and
// encoding/json on a map costs several times more. Columns come in the
// relation's order, then any others the row has.
func appendMessage(b []byte, rel Relation, row fanout.Row, headers []byte) []byte {
	return appendChange(b, rel, row, nil, headers)
}

// appendChange is appendMessage with an "old_value" object of old, unless
// old is nil (replica=full updates carry it).
func appendChange(b []byte, rel Relation, row, old fanout.Row, headers []byte) []byte {
	b = append(b, `{"key":`...)
	b = appendString(b, rel.Key(row))
	b = append(b, `,"value":`...)
	b = appendRow(b, rel, row)
	if old != nil {
		b = append(b, `,"old_value":`...)
		b = appendRow(b, rel, old)
	}
	b = append(b, `,"headers":`...)
	b = append(b, headers...)
	return append(b, '}')
}

// appendRow appends row as a JSON object.
func appendRow(b []byte, rel Relation, row fanout.Row) []byte {
	b = append(b, '{')
	n := 0
	put := func(c string, v *string) {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = appendString(b, c)
		b = append(b, ':')
		if v == nil {
			b = append(b, "null"...)
		} else {
			b = appendString(b, *v)
		}
	}
	for _, c := range rel.Columns {
		if v, ok := row[c]; ok {
			put(c, v)
		}
	}
	if n < len(row) {
		for c, v := range row {
			if !rel.hasColumn(c) {
				put(c, v)
			}
		}
	}
	return append(b, '}')
}

// keyChange names the other key of a primary-key change: header
// key_change_to on the delete of the old key, key_change_from on the insert
// of the new one (none when header is empty).
type keyChange struct{ header, key string }

// changeHeadersJSON is the headers object of a change message.
func changeHeadersJSON(b []byte, operation string, rel Relation, xid uint32, lsn string, op uint64, last bool, kc keyChange) []byte {
	b = append(b, `{"operation":"`...)
	b = append(b, operation...)
	b = append(b, `","relation":[`...)
	b = appendString(b, rel.Schema)
	b = append(b, ',')
	b = appendString(b, rel.Table)
	b = append(b, `],"txids":[`...)
	b = strconv.AppendUint(b, uint64(xid), 10)
	b = append(b, `],"lsn":"`...)
	b = append(b, lsn...)
	b = append(b, `","op_position":`...)
	b = strconv.AppendUint(b, op, 10)
	if kc.header != "" {
		b = append(b, ',')
		b = appendString(b, kc.header)
		b = append(b, ':')
		b = appendString(b, kc.key)
	}
	if last {
		b = append(b, `,"last":true`...)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte { return shapemsg.AppendString(b, s) }
