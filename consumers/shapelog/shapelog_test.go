package shapelog

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

var ctx = context.Background()

func s(v string) *string { return &v }

func row(kv ...string) fanout.Row {
	r := fanout.Row{}
	for i := 0; i+1 < len(kv); i += 2 {
		r[kv[i]] = s(kv[i+1])
	}
	return r
}

func frag(shape string, lsn uint64, seq int, last bool, changes ...fanout.Change) *fanout.Fragment {
	return &fanout.Fragment{Version: fanout.WireVersion, Shape: shape, Xid: uint32(lsn),
		CommitLSN: pglogrepl.LSN(lsn), EndLSN: pglogrepl.LSN(lsn + 8), Seq: seq, Last: last, Changes: changes}
}

func ins(kv ...string) fanout.Change { return fanout.Change{Op: fanout.OpInsert, Row: row(kv...)} }

func upd(old fanout.Row, kv ...string) fanout.Change {
	return fanout.Change{Op: fanout.OpUpdate, Row: row(kv...), Old: old}
}

func del(kv ...string) fanout.Change { return fanout.Change{Op: fanout.OpDelete, Old: row(kv...)} }

func newStore(t *testing.T) (*FileStore, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	st, err := NewFileStore(t.TempDir(), slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return st, &logs
}

func take(t *testing.T, st *FileStore, p int, epoch uint64) Writer {
	t.Helper()
	w, err := st.Take(ctx, p, epoch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func mustAppend(t *testing.T, w Writer, fs ...*fanout.Fragment) Stats {
	t.Helper()
	st, err := w.Append(ctx, fs)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func ids(t *testing.T, st *FileStore, handle string) []string {
	t.Helper()
	rows, err := Materialize(st.Dir(), handle, []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for _, r := range rows {
		out = append(out, *r["id"])
	}
	return out
}

func TestTornTailIsTruncatedOnOpen(t *testing.T) {
	st, logs := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")), frag("sa", 200, 0, true, ins("id", "2")))
	w.Close()
	path := logPath(st.Dir(), "sa")
	good, _ := os.ReadFile(path)

	// Half a frame of a third record, as a SIGKILL mid-write leaves it.
	third, _ := encodeFrame(nil, 1, frag("sa", 300, 0, true, ins("id", "3")))
	os.WriteFile(path, append(append([]byte{}, good...), third[:len(third)/2]...), 0o644)
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Fatalf("reader of a torn log: %v", got)
	}
	w2 := take(t, st, 0, 1)
	mustAppend(t, w2, frag("sa", 300, 0, true, ins("id", "3")))
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1", "2", "3"}) {
		t.Fatalf("after truncation and append: %v", got)
	}
	if !bytes.Contains(logs.Bytes(), []byte("torn")) || !bytes.Contains(logs.Bytes(), []byte("shape=sa")) ||
		!bytes.Contains(logs.Bytes(), []byte("offset=")) {
		t.Fatalf("truncation not logged with shape and offset: %s", logs)
	}
	w2.Close()

	// Garbage with a bad checksum after a good prefix is cut too.
	data, _ := os.ReadFile(path)
	os.WriteFile(path, append(data, []byte("\x10\x00\x00\x00garbagegarbagegarbage")...), 0o644)
	w3 := take(t, st, 0, 1)
	mustAppend(t, w3, frag("sa", 400, 0, true, ins("id", "4")))
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1", "2", "3", "4"}) {
		t.Fatalf("after garbage tail: %v", got)
	}
}

func TestDuplicateAndOlderPositionsAreSkipped(t *testing.T) {
	st, logs := newStore(t)
	w := take(t, st, 0, 1)
	a := frag("sa", 100, 0, false, ins("id", "1"))
	b := frag("sa", 100, 1, true, ins("id", "2"))
	c := frag("sa", 200, 0, true, upd(nil, "id", "1", "v", "x"))
	if got := mustAppend(t, w, a, b, a); got.Appended != 2 || got.Skipped != 1 {
		t.Fatalf("stats %+v", got)
	}
	if got := mustAppend(t, w, c, b, a); got.Appended != 1 || got.Skipped != 2 {
		t.Fatalf("stats %+v", got)
	}
	w.Close()
	// A new writer (after restart) learns the position from the log.
	w2 := take(t, st, 0, 1)
	if got := mustAppend(t, w2, a, b, c); got.Appended != 0 || got.Skipped != 3 {
		t.Fatalf("after reopen: %+v", got)
	}
	rows, _ := Materialize(st.Dir(), "sa", []string{"id"})
	if len(rows) != 2 || *rows[0]["v"] != "x" {
		t.Fatalf("rows %v", rows)
	}
	if got := mustAppend(t, w2, frag("sa", 300, 2, true, ins("id", "9"))); got.Orphans != 1 || got.Appended != 1 {
		t.Fatalf("orphan fragment: %+v", got)
	}
	if !bytes.Contains(logs.Bytes(), []byte("commit_lsn=0/12C")) {
		t.Fatalf("orphan not logged with its LSN: %s", logs)
	}
}

func TestStaleEpochIsRefused(t *testing.T) {
	st, _ := newStore(t)
	old := take(t, st, 3, 1)
	mustAppend(t, old, frag("sa", 100, 0, true, ins("id", "1")))
	take(t, st, 3, 2) // a new owner takes the partition
	before, _ := os.ReadFile(logPath(st.Dir(), "sa"))
	_, err := old.Append(ctx, []*fanout.Fragment{frag("sa", 200, 0, true, ins("id", "2"))})
	var fe *FencedError
	if !errors.Is(err, ErrFenced) || !errors.As(err, &fe) || fe.Current != 2 || fe.Mine != 1 {
		t.Fatalf("stale writer: err = %v", err)
	}
	after, _ := os.ReadFile(logPath(st.Dir(), "sa"))
	if !bytes.Equal(before, after) {
		t.Fatal("fenced writer changed the log")
	}
	if _, err := st.Take(ctx, 3, 1); !errors.Is(err, ErrFenced) {
		t.Fatalf("taking with an older epoch: %v", err)
	}
}

func TestZombieRecordAfterNewerEpochIsIgnored(t *testing.T) {
	st, _ := newStore(t)
	w1 := take(t, st, 0, 1)
	mustAppend(t, w1, frag("sa", 100, 0, true, ins("id", "1")))
	w2 := take(t, st, 0, 2)
	mustAppend(t, w2, frag("sa", 200, 0, true, ins("id", "2")))
	// A zombie write that raced past the epoch check lands after epoch 2's record.
	zombie, _ := encodeFrame(nil, 1, frag("sa", 300, 0, true, ins("id", "666")))
	f, _ := os.OpenFile(logPath(st.Dir(), "sa"), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(zombie)
	f.Close()
	mustAppend(t, w2, frag("sa", 300, 0, true, ins("id", "3")))
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1", "2", "3"}) {
		t.Fatalf("rows %v", got)
	}
}

func TestMaterialize(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w,
		frag("sa", 100, 0, true, ins("id", "10", "v", "a"), ins("id", "9", "v", "b"), ins("id", "100", "v", "c"), ins("id", "-1", "v", "n")),
		// update in place, update changing the key, delete, move out (delete), move in (insert)
		frag("sa", 200, 0, true,
			upd(nil, "id", "10", "v", "a2"),
			upd(row("id", "9"), "id", "11", "v", "b2"),
			del("id", "100"),
			ins("id", "5", "v", "moved-in")),
		// an update carrying only some columns keeps the others (unchanged TOAST)
		frag("sa", 300, 0, true, fanout.Change{Op: fanout.OpUpdate, Row: fanout.Row{"id": s("5"), "w": nil}}),
	)
	rows, err := Materialize(st.Dir(), "sa", []string{"id"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		got = append(got, *r["id"]+"="+*r["v"])
	}
	want := []string{"-1=n", "5=moved-in", "10=a2", "11=b2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	if v, ok := rows[1]["w"]; !ok || v != nil {
		t.Fatalf("NULL column lost: %v", rows[1])
	}

	// text keys sort by bytes; composite keys column by column
	mustAppend(t, w, frag("sb", 100, 0, true, ins("k", "b", "n", "2"), ins("k", "a", "n", "10"), ins("k", "a", "n", "9"), ins("k", "B", "n", "1")))
	rows, err = Materialize(st.Dir(), "sb", []string{"k", "n"})
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, r := range rows {
		got = append(got, *r["k"]+*r["n"])
	}
	if want := []string{"B1", "a9", "a10", "b2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}

	mustAppend(t, w, frag("sb", 200, 0, true, fanout.Change{Op: fanout.OpTruncate}, ins("k", "z", "n", "1")))
	if rows, _ := Materialize(st.Dir(), "sb", []string{"k", "n"}); len(rows) != 1 || *rows[0]["k"] != "z" {
		t.Fatalf("after truncate: %v", rows)
	}

	if err := w.Remove(ctx, "sb"); err != nil {
		t.Fatal(err)
	}
	if rows, err := Materialize(st.Dir(), "sb", []string{"k"}); err != nil || len(rows) != 0 {
		t.Fatalf("removed shape: %v %v", rows, err)
	}
	hs, _ := st.Handles(ctx)
	if !reflect.DeepEqual(hs, []string{"sa"}) {
		t.Fatalf("handles %v", hs)
	}
}
