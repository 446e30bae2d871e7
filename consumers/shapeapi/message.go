package shapeapi

import (
	"encoding/json"
	"slices"
	"strconv"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// Entry is one protocol message with the offset it sits at.
type Entry struct {
	Offset Offset
	JSON   []byte
}

// MustRefetch is the exact body of a 409.
const MustRefetch = `[{"headers":{"control":"must-refetch"}}]`

// EncodeFragment turns the changes of one log fragment into change
// messages at their offsets (FirstOp of the fragment, two ops per change),
// rendered for rel's replica mode (Relation.Full) as Electric renders them.
// A primary-key change is a delete of the old key (header key_change_to)
// then an insert of the new row (key_change_from); `last` marks the shape's
// last operation of the transaction. A truncate cannot be expressed as a
// change: truncated is true and the shape must be rotated (clients
// refetch), the entries before it are kept.
func EncodeFragment(rel Relation, f *fanout.Fragment) (entries []Entry, truncated bool) {
	base := FirstOp(f.Position())
	lsn := strconv.FormatUint(uint64(f.CommitLSN), 10)
	var ps []pending
	for i := range f.Changes {
		c := &f.Changes[i]
		op := base.Op + 2*uint64(i)
		switch c.Op {
		case fanout.OpInsert:
			ps = append(ps, pending{op: op, operation: "insert", row: c.Row, meta: c})
		case fanout.OpUpdate:
			ps = rel.appendUpdate(ps, op, *c)
		case fanout.OpDelete:
			ps = append(ps, pending{op: op, operation: "delete", row: rel.deleted(*c)})
		case fanout.OpTruncate:
			truncated = true
		case fanout.OpMoveIn, fanout.OpMoveOut, fanout.OpSnapshotEnd:
			ps = append(ps, pending{op: op, event: c})
		}
		if truncated {
			break
		}
	}
	lastChange := -1 // `last` marks the transaction's last operation, never an event
	for i, p := range ps {
		if p.event == nil {
			lastChange = i
		}
	}
	entries = make([]Entry, len(ps))
	var headers []byte
	for i, p := range ps {
		off := Offset{Tx: base.Tx, Op: p.op}
		if p.event != nil {
			entries[i] = Entry{Offset: off, JSON: eventMessage(p.event, f.Xid)}
			continue
		}
		if p.meta != nil && p.meta.MoveIn {
			// A row a move-in brought: Electric's is_move_in insert,
			// without txids (it is no transaction's change) but with the
			// LSN it was placed at: clients that apply changes by LSN
			// (pglite-sync drops a change without one once it committed
			// anything) take it in log order.
			headers = moveInHeadersJSON(headers[:0], p.operation, rel, lsn, p.meta)
		} else {
			headers = changeHeadersJSON(headers[:0], p.operation, rel, f.Xid, lsn, p.op, f.Last && !truncated && i == lastChange, p.keyChange)
			headers = withRowMeta(headers, p.meta)
		}
		entries[i] = Entry{Offset: off, JSON: appendChange(nil, rel, p.row, p.old, headers)}
	}
	return entries, truncated
}

// pending is one message of EncodeFragment: its value row, and old_value
// when old is not nil; or an event.
type pending struct {
	op        uint64
	operation string
	row, old  fanout.Row
	keyChange keyChange
	meta      *fanout.Change // the change whose tags and active conditions the message carries (subquery shapes)
	event     *fanout.Change // a move event or snapshot-end
}

// appendUpdate appends the messages of update c at op.
func (rel Relation) appendUpdate(ps []pending, op uint64, c fanout.Change) []pending {
	if c.Old != nil {
		if oldKey, newKey := rel.Key(c.Old), rel.Key(c.Row); oldKey != newKey {
			return append(ps,
				pending{op: op, operation: "delete", row: rel.oldRow(c), keyChange: keyChange{"key_change_to", newKey}},
				pending{op: op + 1, operation: "insert", row: c.Row, keyChange: keyChange{"key_change_from", oldKey}, meta: &c})
		}
	}
	p := pending{op: op, operation: "update", row: c.Row, meta: &c}
	switch {
	case c.Before == nil: // the old row is unknown: the whole new row
	case rel.Full:
		p.old = rel.changedOld(c.Before)
	default:
		p.row = pick(c.Row, c.Before)
	}
	return append(ps, p)
}

// deleted is the value of delete c: the whole old row for replica=full when
// the log has it, else the old key.
func (rel Relation) deleted(c fanout.Change) fanout.Row {
	if rel.Full && c.Before != nil {
		return c.Before
	}
	return c.Old
}

// oldRow is the value of the delete that starts key change c: the whole old
// row for replica=full when the log has it (the new row with Before's old
// values of the changed columns), else the old key.
func (rel Relation) oldRow(c fanout.Change) fanout.Row {
	if !rel.Full || c.Before == nil {
		return c.Old
	}
	out := make(fanout.Row, len(c.Row))
	for k, v := range c.Row {
		out[k] = v
	}
	for k, v := range c.Before {
		out[k] = v
	}
	return out
}

// changedOld is old_value of an update whose Before is before: the old
// values of the changed columns, which is Before without the (unchanged)
// key; may be empty.
func (rel Relation) changedOld(before fanout.Row) fanout.Row {
	out := make(fanout.Row, len(before))
	for k, v := range before {
		if !slices.Contains(rel.PK, k) {
			out[k] = v
		}
	}
	return out
}

// pick is row's values of the columns cols has (the key and the changed
// columns, for a default-replica update).
func pick(row, cols fanout.Row) fanout.Row {
	out := make(fanout.Row, len(cols))
	for k := range cols {
		if v, ok := row[k]; ok {
			out[k] = v
		}
	}
	return out
}

// snapshotHeaders is the headers object of every snapshot row of a relation.
func snapshotHeaders(rel Relation) []byte {
	b := append([]byte(nil), `{"operation":"insert","relation":[`...)
	b = appendString(b, rel.Schema)
	b = append(b, ',')
	b = appendString(b, rel.Table)
	return append(b, "]}"...)
}

// SnapshotRow is the message of one row of an initial snapshot.
func SnapshotRow(rel Relation, row fanout.Row) []byte {
	return appendMessage(nil, rel, row, snapshotHeaders(rel))
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
