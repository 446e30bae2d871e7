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
	type pending struct {
		op        uint64
		operation string
		row       fanout.Row
	}
	var ps []pending
	for i, c := range f.Changes {
		op := base.Op + 2*uint64(i)
		switch c.Op {
		case fanout.OpInsert:
			ps = append(ps, pending{op, "insert", c.Row})
		case fanout.OpUpdate:
			if c.Old != nil && rel.Key(c.Old) != rel.Key(c.Row) {
				ps = append(ps, pending{op, "delete", c.Old}, pending{op + 1, "insert", c.Row})
			} else {
				ps = append(ps, pending{op, "update", c.Row})
			}
		case fanout.OpDelete:
			ps = append(ps, pending{op, "delete", c.Old})
		case fanout.OpTruncate:
			truncated = true
		}
		if truncated {
			break
		}
	}
	entries = make([]Entry, len(ps))
	var headers []byte
	for i, p := range ps {
		headers = changeHeadersJSON(headers[:0], p.operation, rel, f.Xid, lsn, p.op, f.Last && !truncated && i == len(ps)-1)
		entries[i] = Entry{Offset: Offset{Tx: base.Tx, Op: p.op}, JSON: appendMessage(nil, rel, p.row, headers)}
	}
	return entries, truncated
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
