package shapeapi

import (
	"encoding/json"
	"strconv"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// Entry is one protocol message with the offset it sits at.
type Entry struct {
	Offset Offset
	JSON   []byte
}

type changeHeaders struct {
	Operation  string    `json:"operation"`
	Relation   [2]string `json:"relation"`
	Txids      []uint32  `json:"txids,omitempty"`
	LSN        string    `json:"lsn,omitempty"`
	OpPosition *uint64   `json:"op_position,omitempty"`
	Last       bool      `json:"last,omitempty"`
}

type changeMessage struct {
	Key     string        `json:"key"`
	Value   fanout.Row    `json:"value"`
	Headers changeHeaders `json:"headers"`
}

// MustRefetch is the exact body of a 409.
const MustRefetch = `[{"headers":{"control":"must-refetch"}}]`

// EncodeFragment turns the changes of one log fragment into change
// messages at their offsets (FirstOp of the fragment, two ops per change).
// A primary-key change is a delete of the old key then an insert of the new
// row; `last` marks the shape's last operation of the transaction. A
// truncate cannot be expressed as a change: truncated is true and the
// shape must be rotated (clients refetch), the entries before it are kept.
func EncodeFragment(rel Relation, f *fanout.Fragment) (entries []Entry, truncated bool) {
	base := FirstOp(f.Position())
	lsn := strconv.FormatUint(uint64(f.CommitLSN), 10)
	relation := [2]string{rel.Schema, rel.Table}
	add := func(op uint64, operation string, row fanout.Row) {
		o := Offset{Tx: base.Tx, Op: op}
		m := changeMessage{Key: rel.Key(row), Value: row, Headers: changeHeaders{
			Operation: operation, Relation: relation, Txids: []uint32{f.Xid}, LSN: lsn, OpPosition: &o.Op,
		}}
		b, err := json.Marshal(m)
		if err != nil {
			panic(err) // rows of strings always marshal
		}
		entries = append(entries, Entry{Offset: o, JSON: b})
	}
	for i, c := range f.Changes {
		op := base.Op + 2*uint64(i)
		switch c.Op {
		case fanout.OpInsert:
			add(op, "insert", c.Row)
		case fanout.OpUpdate:
			if c.Old != nil && rel.Key(c.Old) != rel.Key(c.Row) {
				add(op, "delete", c.Old)
				add(op+1, "insert", c.Row)
			} else {
				add(op, "update", c.Row)
			}
		case fanout.OpDelete:
			add(op, "delete", c.Old)
		case fanout.OpTruncate:
			return entries, true
		}
	}
	if f.Last && len(entries) > 0 {
		markLast(&entries[len(entries)-1])
	}
	return entries, false
}

// markLast sets headers.last on an encoded change message.
func markLast(e *Entry) {
	var m changeMessage
	if err := json.Unmarshal(e.JSON, &m); err != nil {
		return
	}
	m.Headers.Last = true
	e.JSON, _ = json.Marshal(m)
}

// SnapshotRow is the message of one row of an initial snapshot.
func SnapshotRow(rel Relation, row fanout.Row) []byte {
	b, err := json.Marshal(changeMessage{Key: rel.Key(row), Value: row, Headers: changeHeaders{
		Operation: "insert", Relation: [2]string{rel.Schema, rel.Table}}})
	if err != nil {
		panic(err)
	}
	return b
}

// SnapshotEnd follows the last row of an initial snapshot.
func SnapshotEnd(xmin, xmax uint64, xip []uint64) []byte {
	list := make([]string, len(xip))
	for i, x := range xip {
		list[i] = strconv.FormatUint(x, 10)
	}
	b, _ := json.Marshal(map[string]any{"headers": map[string]any{
		"control": "snapshot-end", "xmin": strconv.FormatUint(xmin, 10), "xmax": strconv.FormatUint(xmax, 10), "xip_list": list}})
	return b
}

// UpToDate ends a response that reached the current end of the log. lsn
// must be a true watermark (Watermark).
func UpToDate(lsn pglogrepl.LSN) []byte {
	return []byte(`{"headers":{"control":"up-to-date","global_last_seen_lsn":"` + strconv.FormatUint(uint64(lsn), 10) + `"}}`)
}

// Watermark is the global_last_seen_lsn of an up-to-date message for a log
// read to its end: every transaction at or below it is in the log. last is
// the commit LSN of the log's last transaction (0 for none), safe the
// pipeline's safe LSN read before the log was (every transaction below it is
// persisted). It is never a commit LSN of the log, so the offset <lsn>_0
// the 1.5 client resumes from after an SSE batch is after every op already
// sent and before every op of a later transaction (a commit record is more
// than a byte long).
func Watermark(last, safe pglogrepl.LSN) pglogrepl.LSN {
	w := pglogrepl.LSN(0)
	if last > 0 {
		w = last + 1
	}
	if safe > 1 && safe-1 > w {
		w = safe - 1
	}
	return w
}
