package shapelog

import (
	"os"
	"reflect"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// ReadLog, from the start or resumed from any cursor it returned, passes
// exactly the records ScanLog marks accepted, and stops at a torn tail.
func TestReadLogSkipsWhatMaterializeSkips(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 2)
	mustAppend(t, w, frag("sa", 100, 0, false, ins("id", "1")), frag("sa", 100, 1, true, ins("id", "2")))
	dup, _ := encodeFrame(nil, 2, frag("sa", 100, 1, true, ins("id", "2")))
	zombie, _ := encodeFrame(nil, 1, frag("sa", 200, 0, true, ins("id", "666")))
	f, _ := os.OpenFile(logPath(st.Dir(), "sa"), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(append(dup, zombie...))
	f.Close()
	mustAppend(t, w, frag("sa", 300, 0, true, ins("id", "3")))

	var want []fanout.Position
	ScanLog(st.Dir(), "sa", func(r LogRecord) error {
		if r.Accepted {
			want = append(want, r.Position)
		}
		return nil
	})
	var got []fanout.Position
	var cursors []Cursor
	end, err := ReadLog(st.Dir(), "sa", Cursor{}, func(e LogEntry, next Cursor) error {
		fr, err := e.Fragment()
		if err != nil || fr.Position() != e.Position {
			t.Fatalf("entry %v decodes to %v, %v", e.Position, fr, err)
		}
		got = append(got, fr.Position())
		cursors = append(cursors, next)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || len(got) != 3 {
		t.Fatalf("read %v, ScanLog accepts %v", got, want)
	}
	for i, c := range cursors {
		var rest []fanout.Position
		if _, err := ReadLog(st.Dir(), "sa", c, func(fr LogEntry, _ Cursor) error {
			rest = append(rest, fr.Position)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rest, want[i+1:]) && !(len(rest) == 0 && i == len(want)-1) {
			t.Fatalf("resumed after %v: read %v, want %v", want[i], rest, want[i+1:])
		}
	}
	if last, ok := end.Last(); !ok || last != want[len(want)-1] {
		t.Fatalf("end cursor's last position %v %v", last, ok)
	}

	// A stop leaves the cursor before the fragment that stopped it (past skipped records).
	stopped, err := ReadLog(st.Dir(), "sa", Cursor{}, func(fr LogEntry, _ Cursor) error {
		if fr.Position.CommitLSN == 300 {
			return ErrStopRead
		}
		return nil
	})
	if last, _ := stopped.Last(); err != nil || last != want[1] {
		t.Fatalf("stopped after %v (%v), want after %v", last, err, want[1])
	}
	var again []fanout.Position
	ReadLog(st.Dir(), "sa", stopped, func(fr LogEntry, _ Cursor) error {
		again = append(again, fr.Position)
		return nil
	})
	if !reflect.DeepEqual(again, want[2:]) {
		t.Fatalf("after a stop read %v, want %v", again, want[2:])
	}

	// A torn tail (a write in progress) ends the read where it starts.
	torn, _ := encodeFrame(nil, 2, frag("sa", 400, 0, true, ins("id", "4")))
	f, _ = os.OpenFile(logPath(st.Dir(), "sa"), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(torn[:len(torn)-3])
	f.Close()
	after, err := ReadLog(st.Dir(), "sa", end, func(fr LogEntry, _ Cursor) error {
		t.Fatalf("read %v from a torn tail", fr.Position)
		return nil
	})
	if err != nil || after.Offset != end.Offset {
		t.Fatalf("torn tail: cursor %d (%v), want %d", after.Offset, err, end.Offset)
	}
	if c, err := ReadLog(st.Dir(), "missing", Cursor{}, nil); err != nil || c.Offset != 0 {
		t.Fatalf("missing log: %v %v", c, err)
	}
}

// Xid reads a fragment's xid without decoding it, and agrees with Fragment.
func TestLogEntryXid(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 2)
	a := frag("sa", 100, 0, true, ins("id", "1"))
	a.Xid = 4000000000
	b := frag("sa", 200, 0, true, ins("xid", "7"))
	b.Xid = 12
	mustAppend(t, w, a, b)
	var got []uint32
	if _, err := ReadLog(st.Dir(), "sa", Cursor{}, func(e LogEntry, _ Cursor) error {
		x, ok := e.Xid()
		fr, err := e.Fragment()
		if !ok || err != nil || x != fr.Xid {
			t.Fatalf("Xid() = %d %v, the fragment's is %d (%v)", x, ok, fr.Xid, err)
		}
		got = append(got, x)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []uint32{4000000000, 12}) {
		t.Fatalf("xids %v", got)
	}
}
