package shapelog

import (
	"encoding/binary"
	"fmt"
	"os"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// readAll reads the log from c and returns the positions passed on, the
// cursor after each, and the cursor ReadLog returned.
func readAll(t *testing.T, dir, handle string, c Cursor) ([]fanout.Position, []Cursor, Cursor) {
	t.Helper()
	var got []fanout.Position
	var nexts []Cursor
	end, err := ReadLog(dir, handle, c, func(e LogEntry, next Cursor) error {
		got = append(got, e.Position)
		nexts = append(nexts, next)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, nexts, end
}

func pos(lsn uint64, seq int) fanout.Position {
	return fanout.Position{CommitLSN: pglogrepl.LSN(lsn), Seq: seq}
}

// A transaction that reaches a log in several records, over several
// batches, is readable in one step, when its last record is in the log;
// until then readers (ReadLog and Materialize) see nothing of it and a read
// resumed from the cursor they got finds all of it.
func TestReadersSeeOnlyWholeTransactions(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")))
	got, _, c := readAll(t, st.Dir(), "sa", Cursor{})
	if !reflect.DeepEqual(got, []fanout.Position{pos(100, 0)}) {
		t.Fatalf("read %v", got)
	}

	mustAppend(t, w, frag("sa", 200, 0, false, ins("id", "2")))
	mustAppend(t, w, frag("sa", 200, 1, false, ins("id", "3")))
	if got, _, c2 := readAll(t, st.Dir(), "sa", c); len(got) != 0 || c2 != c {
		t.Fatalf("a transaction without its last record was read: %v (cursor %v, want %v)", got, c2, c)
	}
	if got, _, _ := readAll(t, st.Dir(), "sa", Cursor{}); !reflect.DeepEqual(got, []fanout.Position{pos(100, 0)}) {
		t.Fatalf("read from the start: %v", got)
	}
	if rows := ids(t, st, "sa"); !reflect.DeepEqual(rows, []string{"1"}) {
		t.Fatalf("Materialize applied part of a transaction: %v", rows)
	}

	mustAppend(t, w, frag("sa", 200, 2, true, ins("id", "4")))
	got, nexts, end := readAll(t, st.Dir(), "sa", c)
	want := []fanout.Position{pos(200, 0), pos(200, 1), pos(200, 2)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after the last record: read %v, want %v", got, want)
	}
	if rows := ids(t, st, "sa"); !reflect.DeepEqual(rows, []string{"1", "2", "3", "4"}) {
		t.Fatalf("Materialize: %v", rows)
	}
	// Every cursor handed out, inside the transaction too, resumes exactly.
	for i, n := range nexts {
		rest, _, _ := readAll(t, st.Dir(), "sa", n)
		if !reflect.DeepEqual(rest, want[i+1:]) && !(len(rest) == 0 && i == len(want)-1) {
			t.Fatalf("resumed after %v: %v, want %v", want[i], rest, want[i+1:])
		}
	}
	if last, ok := end.Last(); !ok || last != pos(200, 2) {
		t.Fatalf("end cursor's last is %v %v", last, ok)
	}

	// A read stopped inside a complete transaction resumes inside it (the
	// record fn stopped at is not consumed).
	var first []fanout.Position
	stop, err := ReadLog(st.Dir(), "sa", c, func(e LogEntry, _ Cursor) error {
		first = append(first, e.Position)
		if len(first) == 2 {
			return ErrStopRead
		}
		return nil
	})
	if err != nil || !reflect.DeepEqual(first, want[:2]) {
		t.Fatalf("stopped read: %v %v", first, err)
	}
	if rest, _, _ := readAll(t, st.Dir(), "sa", stop); !reflect.DeepEqual(rest, want[1:]) {
		t.Fatalf("resumed from a stopped read: %v", rest)
	}
}

// A transaction whose last record never comes (it was dead-lettered) is
// readable once a later transaction is in the log: the partition is handled
// in commit order, so nothing more of it will come.
func TestALaterTransactionEndsAnIncompleteOne(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w, frag("sa", 100, 0, false, ins("id", "1")))
	if got, _, _ := readAll(t, st.Dir(), "sa", Cursor{}); len(got) != 0 {
		t.Fatalf("read %v", got)
	}
	mustAppend(t, w, frag("sa", 200, 0, false, ins("id", "2")))
	got, _, c := readAll(t, st.Dir(), "sa", Cursor{})
	if !reflect.DeepEqual(got, []fanout.Position{pos(100, 0)}) {
		t.Fatalf("read %v, want 100#0 only (200 is still open)", got)
	}
	mustAppend(t, w, frag("sa", 200, 1, true, ins("id", "3")))
	if got, _, _ := readAll(t, st.Dir(), "sa", c); !reflect.DeepEqual(got, []fanout.Position{pos(200, 0), pos(200, 1)}) {
		t.Fatalf("read %v", got)
	}
}

// Duplicates and a zombie's records inside an open transaction change
// nothing of what is read.
func TestDuplicatesInsideAnOpenTransaction(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 2)
	mustAppend(t, w, frag("sa", 100, 0, false, ins("id", "1")))
	dup, _ := encodeFrame(nil, 2, frag("sa", 100, 0, false, ins("id", "1")))
	zombie, _ := encodeFrame(nil, 1, frag("sa", 100, 1, true, ins("id", "666")))
	f, _ := os.OpenFile(logPath(st.Dir(), "sa"), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(append(dup, zombie...))
	f.Close()
	if got, _, _ := readAll(t, st.Dir(), "sa", Cursor{}); len(got) != 0 {
		t.Fatalf("a zombie's last record completed the transaction: %v", got)
	}
	mustAppend(t, w, frag("sa", 100, 1, true, ins("id", "2")))
	if rows := ids(t, st, "sa"); !reflect.DeepEqual(rows, []string{"1", "2"}) {
		t.Fatalf("rows %v", rows)
	}
}

// Records of version 2 (no xid or last in the header) are read with the
// same rule: both come from the fragment's JSON.
func TestVersion2RecordsFollowTheRule(t *testing.T) {
	st, _ := newStore(t)
	if err := os.MkdirAll(st.Dir()+"/shapes/sa", 0o755); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for _, fr := range []*fanout.Fragment{
		frag("sa", 100, 0, true, ins("id", "1")),
		frag("sa", 200, 0, false, ins("id", "2")),
	} {
		fr.Xid = 77
		body, _ := fr.Wire()
		rec := append([]byte{recordV2}, binary.LittleEndian.AppendUint64(nil, 1)...)
		rec = binary.LittleEndian.AppendUint64(rec, uint64(fr.CommitLSN))
		rec = binary.LittleEndian.AppendUint32(rec, uint32(fr.Seq))
		buf, _ = appendFrame(buf, append(rec, body...))
	}
	if err := os.WriteFile(logPath(st.Dir(), "sa"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
	var xids []uint32
	got, _, _ := readAll(t, st.Dir(), "sa", Cursor{})
	ReadLog(st.Dir(), "sa", Cursor{}, func(e LogEntry, _ Cursor) error {
		x, _ := e.Xid()
		xids = append(xids, x)
		if e.Changes != -1 || !e.MayTruncate {
			t.Fatalf("a version 2 record claims to know its changes (%d) or truncate (%t)", e.Changes, e.MayTruncate)
		}
		return nil
	})
	if !reflect.DeepEqual(got, []fanout.Position{pos(100, 0)}) || !reflect.DeepEqual(xids, []uint32{77}) {
		t.Fatalf("read %v xids %v", got, xids)
	}
}

// fragmentHead reads what the fragment says, or declines.
func TestFragmentHead(t *testing.T) {
	fr := frag("sa", 100, 3, true, ins("id", "1", "last", "false"))
	fr.Xid = 4000000000
	body, _ := fr.Wire()
	if x, last, ok := fragmentHead(body); !ok || x != 4000000000 || !last {
		t.Fatalf("fragmentHead = %d %v %v", x, last, ok)
	}
	for _, b := range []string{`{"xid":1,"last":true}`, `{"xid":1,"changes":[]}`, `{"last":maybe,"xid":1,"changes":[]}`, `[]`} {
		if _, _, ok := fragmentHead([]byte(b)); ok {
			t.Fatalf("fragmentHead accepted %s", b)
		}
	}
}

// A version 3 header counts the changes and says whether one truncates.
func TestRecordHeaderCountsChangesAndTruncates(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1"), ins("id", "2")),
		frag("sa", 200, 0, true, ins("id", "3"), fanout.Change{Op: fanout.OpTruncate}))
	var got []string
	ReadLog(st.Dir(), "sa", Cursor{}, func(e LogEntry, _ Cursor) error {
		got = append(got, fmt.Sprint(e.Changes, e.MayTruncate))
		return nil
	})
	if !reflect.DeepEqual(got, []string{"2 false", "2 true"}) {
		t.Fatalf("headers say %v", got)
	}
}
