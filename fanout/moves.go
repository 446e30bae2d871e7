package fanout

import (
	"encoding/json"
	"strconv"

	"github.com/fanout/pipeline/fanout/jsontext"
)

// Moves of shapes with subqueries (`col IN (SELECT ...)`), as they travel
// from ingest to the shape logs. ingest keeps every subquery's result from
// the replication stream and decides, at each change, which values enter
// or leave it (fanout/match/deps.go):
//
//   - A value leaving a result moves rows out: the shape's fragment of that
//     transaction holds an OpMoveOut event with Electric's patterns. The
//     consumer writing the log puts deletes of the rows it moves out right
//     before it (consumers/moveout.go), so a client that ignores events
//     (a plain ShapeStream, pglite-sync) ends equal to the query too.
//   - A value entering a result moves rows in: the fragment holds an
//     OpMoveIn event and opens a window (Fragment.OpensWindow). ingest reads
//     the rows that now match from Postgres in a snapshot and, once its
//     stream has passed every transaction that snapshot saw, publishes them
//     as inserts with MoveIn set, ended by an OpSnapshotEnd carrying the
//     snapshot, in a fragment that closes the window (ClosesWindows).
//     Readers see nothing inside a window until it is closed, so every
//     up-to-date they are given covers the moved-in rows.

const (
	// OpMoveIn is Electric's move-in event: values entered a subquery's
	// result (Patterns); conditions of rows already in the shape turn true.
	OpMoveIn Op = "move-in"
	// OpMoveOut is Electric's move-out event: values left a subquery's
	// result (Patterns); rows whose tag matches turn that condition false.
	OpMoveOut Op = "move-out"
	// OpSnapshotEnd ends the rows of a move-in: Snapshot is the snapshot
	// they were read at.
	OpSnapshotEnd Op = "snapshot-end"
)

// MaxClosedWindows is the most move-in windows one fragment closes (the
// log record's header has room for that many).
const MaxClosedWindows = 31

// Pattern is one (position, value hash) of a move event: the rows whose
// tag has that hash at that position.
type Pattern struct {
	Pos   int    `json:"pos"`
	Value string `json:"value"`
}

// IsEvent reports whether c is a move event or a snapshot-end rather than
// a row change.
func (c *Change) IsEvent() bool {
	return c.Op == OpMoveIn || c.Op == OpMoveOut || c.Op == OpSnapshotEnd
}

// appendMoveFields appends the subquery fields of c, as encoding/json writes
// them (struct order, omitempty).
func appendMoveFields(b []byte, c *Change) []byte {
	strs := func(name string, list []string) {
		if len(list) == 0 {
			return
		}
		b = append(b, name...)
		b = append(b, '[')
		for i, s := range list {
			if i > 0 {
				b = append(b, ',')
			}
			b = jsontext.AppendString(b, s)
		}
		b = append(b, ']')
	}
	strs(`,"tags":`, c.Tags)
	strs(`,"removed_tags":`, c.RemovedTags)
	if len(c.Active) > 0 {
		b = append(b, `,"active":[`...)
		for i, a := range c.Active {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendBool(b, a)
		}
		b = append(b, ']')
	}
	if c.MoveIn {
		b = append(b, `,"move_in":true`...)
	}
	if len(c.Patterns) > 0 {
		b = append(b, `,"patterns":[`...)
		for i, p := range c.Patterns {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"pos":`...)
			b = strconv.AppendInt(b, int64(p.Pos), 10)
			b = append(b, `,"value":`...)
			b = jsontext.AppendString(b, p.Value)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if c.Snapshot != nil {
		snap, _ := json.Marshal(c.Snapshot) // numbers and a list of numbers: cannot fail
		b = append(b, `,"snapshot":`...)
		b = append(b, snap...)
	}
	return b
}
