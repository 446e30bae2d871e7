package shapeapi

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// The messages of a shape with subqueries are Electric 1.7's: row messages
// carry tags and active_conditions (updates removed_tags too), moves are
// event messages with patterns and txids, move-in rows are inserts with
// is_move_in, without txids but with the LSN they were placed at (for
// clients that apply by LSN), and a snapshot-end ends them. Events
// take offsets like changes, and `last` marks the last row message.
func TestEncodeSubqueryMessages(t *testing.T) {
	rel := Relation{Schema: "public", Table: "issues", PK: []string{"id"}, Columns: []string{"id", "p"}}
	f := &fanout.Fragment{Xid: 9, CommitLSN: 2000, Last: true, Changes: []fanout.Change{
		{Op: fanout.OpInsert, Row: fanout.Row{"id": str("1"), "p": str("10")}, Tags: []string{"h10"}, Active: []bool{true}},
		{Op: fanout.OpUpdate, Row: fanout.Row{"id": str("1"), "p": str("20")}, Tags: []string{"h20"}, RemovedTags: []string{"h10"}, Active: []bool{true}},
		{Op: fanout.OpMoveOut, Patterns: []fanout.Pattern{{Pos: 0, Value: "h30"}}},
		{Op: fanout.OpMoveIn, Patterns: []fanout.Pattern{{Pos: 0, Value: "h40"}}},
		{Op: fanout.OpInsert, Row: fanout.Row{"id": str("4"), "p": str("40")}, MoveIn: true, Tags: []string{"h40"}, Active: []bool{true}},
		{Op: fanout.OpSnapshotEnd, Snapshot: &visibility.Snapshot{Xmin: 5, Xmax: 8, Xip: []uint64{6}}},
	}}
	entries, _ := EncodeFragment(rel, f)
	var got []string
	for _, e := range entries {
		var m struct {
			Headers map[string]any `json:"headers"`
		}
		if err := json.Unmarshal(e.JSON, &m); err != nil {
			t.Fatalf("%s: %v", e.JSON, err)
		}
		got = append(got, string(e.JSON))
	}
	want := []string{
		`{"key":"\"public\".\"issues\"/\"1\"","value":{"id":"1","p":"10"},"headers":{"operation":"insert","relation":["public","issues"],"txids":[9],"lsn":"2000","op_position":0,"tags":["h10"],"active_conditions":[true]}}`,
		`{"key":"\"public\".\"issues\"/\"1\"","value":{"id":"1","p":"20"},"headers":{"operation":"update","relation":["public","issues"],"txids":[9],"lsn":"2000","op_position":2,"tags":["h20"],"removed_tags":["h10"],"active_conditions":[true]}}`,
		`{"headers":{"event":"move-out","patterns":[{"pos":0,"value":"h30"}],"txids":[9]}}`,
		`{"headers":{"event":"move-in","patterns":[{"pos":0,"value":"h40"}],"txids":[9]}}`,
		`{"key":"\"public\".\"issues\"/\"4\"","value":{"id":"4","p":"40"},"headers":{"operation":"insert","relation":["public","issues"],"lsn":"2000","is_move_in":true,"tags":["h40"],"active_conditions":[true]}}`,
		`{"headers":{"control":"snapshot-end","xip_list":["6"],"xmax":"8","xmin":"5"}}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i, e := range entries {
		if e.Offset != (Offset{Tx: 2000, Op: uint64(2 * i)}) {
			t.Errorf("entry %d at %v", i, e.Offset)
		}
	}
}
