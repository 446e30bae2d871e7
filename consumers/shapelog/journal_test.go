package shapelog

import (
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"os"
	"reflect"
	"strings"
	"testing"
)

// A machine crash loses what was not fsynced: the shape logs lose the
// batches since the last checkpoint (the disk model of durability_test.go).
// The next owner replays the partition's journal and the logs hold every
// acked batch again, once.
func TestJournalRestoresWritesLostInACrash(t *testing.T) {
	d := watchDisk(t)
	st, logs := newStore(t)
	w := take(t, st, 5, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")), frag("sb", 100, 0, true, ins("id", "1")))
	if err := w.(*fileWriter).checkpoint(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, w, frag("sa", 200, 0, true, ins("id", "2")), frag("sb", 200, 0, true, ins("id", "2")))
	mustAppend(t, w, frag("sa", 300, 0, true, ins("id", "3")))

	// The crash, with the writer never closed (no checkpoint at Close).
	d.powerLoss(t, st.Dir())
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1"}) {
		t.Fatalf("sa after the power loss, before replay: %v, want [1] (the model lost nothing?)", got)
	}
	journal := journalPath(st.Dir(), 5, 1)
	if fi, err := os.Stat(journal); err != nil || fi.Size() == 0 {
		t.Fatalf("journal %s empty or missing after the crash: %v", journal, err)
	}

	w2 := take(t, st, 5, 2) // the next owner
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1", "2", "3"}) {
		t.Fatalf("sa after replay: %v", got)
	}
	if got := ids(t, st, "sb"); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Fatalf("sb after replay: %v", got)
	}
	if raw := frames(t, logPath(st.Dir(), "sb")); raw != 2 {
		t.Fatalf("sb holds %d frames after replay, want 2 (replay must skip what the log holds)", raw)
	}
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("replayed journal of epoch 1 still there: %v", err)
	}
	if !strings.Contains(logs.String(), "replayed records") || !strings.Contains(logs.String(), "records=3") {
		t.Fatalf("replay not logged with its count: %s", logs)
	}
	// Redelivery of the replayed batch is a duplicate; new work goes on.
	if s := mustAppend(t, w2, frag("sa", 300, 0, true, ins("id", "3")), frag("sa", 400, 0, true, ins("id", "4"))); s.Skipped != 1 || s.Appended != 1 {
		t.Fatalf("after replay: %+v", s)
	}
	// A clean close checkpoints: the next owner has nothing to replay.
	w2.Close()
	if fi, err := os.Stat(journalPath(st.Dir(), 5, 2)); err != nil || fi.Size() != 0 {
		t.Fatalf("journal after a clean close: %v, %v", fi, err)
	}
}

// A crash in the middle of a journal append leaves a torn record: that batch
// was never acked, so replay stops there and the records before it count.
func TestJournalTornTailIsIgnored(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")))
	os.WriteFile(logPath(st.Dir(), "sa"), nil, 0o644) // lost in the crash
	record, _ := encodeRecord(1, frag("sa", 200, 0, true, ins("id", "2")))
	torn, _ := appendJournalFrame(nil, "sa", record)
	f, _ := os.OpenFile(journalPath(st.Dir(), 0, 1), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(torn[:len(torn)-3])
	f.Close()
	take(t, st, 0, 1) // the same consumer, restarted
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1"}) {
		t.Fatalf("rows %v, want [1]", got)
	}
}

// Removing a shape empties the journal first, so a replay cannot bring the
// removed log back.
func TestRemovedShapeStaysRemovedAfterReplay(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")), frag("sb", 100, 0, true, ins("id", "1")))
	if err := w.Remove(ctx, "sa"); err != nil {
		t.Fatal(err)
	}
	take(t, st, 0, 2)
	if _, err := os.Stat(logPath(st.Dir(), "sa")); !os.IsNotExist(err) {
		t.Fatalf("removed log came back: %v", err)
	}
}

// Logs written by the first version (JSON records) are still read.
func TestFirstVersionJSONRecordsAreRead(t *testing.T) {
	st, _ := newStore(t)
	body, _ := frag("sa", 100, 0, true, ins("id", "7")).Encode()
	payload, _ := json.Marshal(jsonRecord{Epoch: 1, Fragment: body})
	var h [headerSize]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[4:8], crc32.Checksum(payload, crcTable))
	os.MkdirAll(strings.TrimSuffix(logPath(st.Dir(), "sa"), "/log"), 0o755)
	os.WriteFile(logPath(st.Dir(), "sa"), append(h[:], payload...), 0o644)
	w := take(t, st, 0, 1)
	if s := mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "7")), frag("sa", 200, 0, true, ins("id", "8"))); s.Skipped != 1 {
		t.Fatalf("position of a JSON record not learned: %+v", s)
	}
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"7", "8"}) {
		t.Fatalf("rows %v", got)
	}
}

// frames counts the intact frames of a log, duplicates included.
func frames(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	if _, _, err := scanFrames(f, func(int64, []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// ScanLog reports every record with whether readers apply it.
func TestScanLogMarksDuplicatesAndZombieRecords(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 2)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")))
	dup, _ := encodeFrame(nil, 2, frag("sa", 100, 0, true, ins("id", "1")))
	zombie, _ := encodeFrame(nil, 1, frag("sa", 200, 0, true, ins("id", "2")))
	f, _ := os.OpenFile(logPath(st.Dir(), "sa"), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(append(dup, zombie...))
	f.Close()
	var got []bool
	if err := ScanLog(st.Dir(), "sa", func(r LogRecord) error { got = append(got, r.Accepted); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []bool{true, false, false}) {
		t.Fatalf("accepted flags %v, want [true false false]", got)
	}
}
