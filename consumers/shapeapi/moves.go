package shapeapi

import (
	"strconv"

	"github.com/fanout/pipeline/consumers/shapemsg"
	"github.com/fanout/pipeline/fanout"
)

// Messages of shapes with subqueries (fanout/moves.go), as Electric 1.7
// writes them: every row message carries tags and active_conditions (and an
// update removed_tags), a move is an event message, and the rows a move-in
// brings are inserts with is_move_in, ended by a snapshot-end.

// withRowMeta adds c's tags, removed tags and active conditions to a row
// message's headers (an object ending in '}').
func withRowMeta(headers []byte, c *fanout.Change) []byte {
	if c == nil || c.Tags == nil {
		return headers
	}
	headers = headers[:len(headers)-1]
	headers = shapemsg.AppendRowMeta(headers, c.Tags, c.RemovedTags, c.Active)
	return append(headers, '}')
}

// moveInHeadersJSON is the headers object of a row a move-in brought: an
// insert, or an update of the whole row when the shape held it already
// (consumers/moveout.go).
func moveInHeadersJSON(b []byte, operation string, rel Relation, lsn string, c *fanout.Change) []byte {
	b = append(b, `{"operation":"`...)
	b = append(b, operation...)
	b = append(b, `","relation":[`...)
	b = appendString(b, rel.Schema)
	b = append(b, ',')
	b = appendString(b, rel.Table)
	b = append(b, `],"lsn":`...)
	b = appendString(b, lsn)
	b = append(b, `,"is_move_in":true`...)
	b = shapemsg.AppendRowMeta(b, c.Tags, nil, c.Active)
	return append(b, '}')
}

// eventMessage is the message of a move event ({"headers":{"event":
// "move-out","patterns":[...],"txids":[xid]}}) or of the snapshot-end that
// ends a move-in's rows.
func eventMessage(c *fanout.Change, xid uint32) []byte {
	if c.Op == fanout.OpSnapshotEnd {
		return SnapshotEnd(c.Snapshot.Xmin, c.Snapshot.Xmax, c.Snapshot.Xip)
	}
	b := append([]byte(nil), `{"headers":{"event":`...)
	b = appendString(b, string(c.Op))
	b = append(b, `,"patterns":[`...)
	for i, p := range c.Patterns {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"pos":`...)
		b = strconv.AppendInt(b, int64(p.Pos), 10)
		b = append(b, `,"value":`...)
		b = appendString(b, p.Value)
		b = append(b, '}')
	}
	b = append(b, `],"txids":[`...)
	b = strconv.AppendUint(b, uint64(xid), 10)
	return append(b, "]}}"...)
}
