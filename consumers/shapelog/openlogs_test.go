package shapelog

import (
	"fmt"
	"os"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// A writer keeps at most about defaultMaxOpenLogs files open, and a log it closed
// keeps its place: a duplicate is still skipped after the reopen, and a log
// changed by someone else meanwhile is rescanned.
func TestWriterBoundsOpenLogsAndKeepsTheirState(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	n := defaultMaxOpenLogs * 3
	for i := 0; i < n; i++ {
		mustAppend(t, w, frag(fmt.Sprintf("s%04d", i), 100, 0, true, ins("id", "1")))
		if open := len(w.(*fileWriter).logs); open > defaultMaxOpenLogs+1 {
			t.Fatalf("%d logs open after %d shapes, want at most %d", open, i+1, defaultMaxOpenLogs+1)
		}
	}
	// Every log again: the first ones were closed; their position is kept.
	for i := 0; i < n; i++ {
		if s := mustAppend(t, w, frag(fmt.Sprintf("s%04d", i), 100, 0, true, ins("id", "2"))); s.Skipped != 1 {
			t.Fatalf("shape %d: a redelivered fragment was not skipped after its log was closed and reopened: %+v", i, s)
		}
	}
	// A log that grew while closed (another writer, a zombie) is rescanned.
	victim := "s0000"
	fw := w.(*fileWriter)
	if _, open := fw.logs[victim]; open {
		fw.closeIdleLogs()
		fw.closed[victim] = closedLog{acc: fw.logs[victim].acc, size: fw.logs[victim].size}
		fw.logs[victim].f.Close()
		delete(fw.logs, victim)
	}
	other := take(t, st, 0, 1)
	mustAppend(t, other, frag(victim, 200, 0, true, ins("id", "3")))
	if s := mustAppend(t, w, frag(victim, 200, 0, true, ins("id", "3"))); s.Skipped != 1 {
		t.Fatalf("a log changed while closed was not rescanned: %+v", s)
	}
	if got := ids(t, st, victim); fmt.Sprint(got) != "[1 3]" {
		t.Fatalf("rows %v, want [1 3]", got)
	}
	if _, err := os.Stat(logPath(st.Dir(), victim)); err != nil {
		t.Fatal(err)
	}
}

// The logs of busy shapes stay open while those of rarely written shapes
// come and go: a writer closes the least recently used logs first.
func TestBusyShapesKeepTheirLogsOpen(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	fw := w.(*fileWriter)
	const busy, rarePerBatch = 16, 50
	rare := 0
	for round := 0; round < 4*defaultMaxOpenLogs/rarePerBatch; round++ {
		// Each batch: rare shapes, the busy ones, more rare shapes.
		var batch []*fanout.Fragment
		for i := 0; i < rarePerBatch; i++ {
			batch = append(batch, frag(fmt.Sprintf("rare%05d", rare), 100, 0, true, ins("id", "1")))
			rare++
			if i == rarePerBatch/2 {
				for b := 0; b < busy; b++ {
					batch = append(batch, frag(fmt.Sprintf("busy%02d", b), uint64(100+round), 0, true, ins("id", fmt.Sprint(round))))
				}
			}
		}
		// The rare shapes are new: only a busy shape's log can be reopened.
		if st := mustAppend(t, w, batch...); st.Reopened != 0 {
			t.Fatalf("round %d: %d logs of busy shapes, written in every batch, were closed and reopened (%d open, %d closed)", round, st.Reopened, len(fw.logs), len(fw.closed))
		}
	}
	if len(fw.closed) == 0 {
		t.Fatal("no log was closed: the test did not open enough logs to reach the bound")
	}
	// Reopened counts: a rare shape written again is a reopen.
	if st := mustAppend(t, w, frag("rare00000", 200, 0, true, ins("id", "2"))); st.Reopened != 1 {
		t.Fatalf("writing a log closed long ago: Reopened %d, want 1", st.Reopened)
	}
}

// Closing idle logs makes nothing durable and costs no fsync: a batch at
// 300K shapes names thousands of logs, and a checkpoint per batch was most
// of the consumers' time there. The next checkpoint syncs the closed logs,
// with one syncfs when there are many (or, where syncfs is not trusted, by
// fsyncing each through a new descriptor), so a power loss after it loses
// nothing.
func TestClosedLogsAreFsyncedAtTheNextCheckpoint(t *testing.T) {
	for _, mode := range []string{"syncfs", "fsync each log"} {
		t.Run(mode, func(t *testing.T) {
			d := watchDisk(t)
			st, _ := newStore(t)
			w := take(t, st, 0, 1)
			if fw := w.(*fileWriter); mode != "syncfs" && fw.fs != nil {
				fw.fs.Close()
				fw.fs = nil
			} else if mode == "syncfs" && fw.fs == nil {
				t.Skip("syncfs is not used on this system (Linux 5.8 or later only)")
			}
			n := defaultMaxOpenLogs * 3
			for i := 0; i < n; i++ {
				mustAppend(t, w, frag(fmt.Sprintf("s%04d", i), 100, 0, true, ins("id", "1")))
			}
			for i := 0; i < n; i++ {
				if path := logPath(st.Dir(), fmt.Sprintf("s%04d", i)); d.fsynced(path) {
					t.Fatalf("log %s was fsynced before any checkpoint (closing idle logs should not sync)", path)
				}
			}
			if err := w.Close(); err != nil { // a checkpoint
				t.Fatal(err)
			}
			if used := d.syncfsCalls > 0; used != (mode == "syncfs") {
				t.Fatalf("%s: %d syncfs calls", mode, d.syncfsCalls)
			}
			d.powerLoss(t, st.Dir())
			take(t, st, 0, 2)
			for i := 0; i < n; i++ {
				h := fmt.Sprintf("s%04d", i)
				if got := ids(t, st, h); fmt.Sprint(got) != "[1]" {
					t.Fatalf("shape %s after a checkpoint and a power loss: rows %v, want [1]", h, got)
				}
			}
		})
	}
}

// A checkpoint of a few logs fsyncs them and leaves the rest of the file
// system alone.
func TestASmallCheckpointFsyncsEachLog(t *testing.T) {
	d := watchDisk(t)
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	for i := 0; i < 3; i++ {
		mustAppend(t, w, frag(fmt.Sprintf("s%d", i), 100, 0, true, ins("id", "1")))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if d.syncfsCalls != 0 {
		t.Fatalf("a checkpoint of 3 logs used syncfs %d times", d.syncfsCalls)
	}
	for i := 0; i < 3; i++ {
		if path := logPath(st.Dir(), fmt.Sprintf("s%d", i)); !d.fsynced(path) {
			t.Fatalf("log %s was not fsynced at the checkpoint", path)
		}
	}
}

// One batch may name more shapes than the writer keeps logs open (a batch
// of packed messages at 300K shapes names thousands): it is journaled with
// one fsync, the open-file bound holds throughout, every log gets its
// fragments, and a redelivery of the whole batch writes nothing twice.
func TestABatchOfMoreShapesThanOpenLogsIsOneJournalAppend(t *testing.T) {
	d := watchDisk(t)
	st, _ := newStore(t)
	w := take(t, st, 0, 1)
	n := defaultMaxOpenLogs * 4
	var batch []*fanout.Fragment
	for i := 0; i < n; i++ {
		batch = append(batch, frag(fmt.Sprintf("s%04d", i), 100, 0, false, ins("id", "1")), frag(fmt.Sprintf("s%04d", i), 100, 1, true, ins("id", "2")))
	}
	journal := journalPath(st.Dir(), 0, 1)
	before := d.count(journal)
	if s := mustAppend(t, w, batch...); s.Appended != 2*n || s.Logs != n {
		t.Fatalf("appended %+v, want %d fragments in %d logs", s, 2*n, n)
	}
	if got := d.count(journal) - before; got != 1 {
		t.Fatalf("the batch took %d journal fsyncs, want 1", got)
	}
	if open := len(w.(*fileWriter).logs); open > defaultMaxOpenLogs+1 {
		t.Fatalf("%d logs open after the batch, want at most %d", open, defaultMaxOpenLogs+1)
	}
	if s := mustAppend(t, w, batch...); s.Skipped != 2*n || s.Appended != 0 {
		t.Fatalf("redelivered batch: %+v, want every fragment skipped", s)
	}
	for i := 0; i < n; i += 97 {
		if got := ids(t, st, fmt.Sprintf("s%04d", i)); fmt.Sprint(got) != "[1 2]" {
			t.Fatalf("shape %d: rows %v, want [1 2]", i, got)
		}
	}
}

// How many logs a writer keeps open follows the descriptor limit, so that
// one consumer holding every partition stays within it; SetMaxOpenLogs
// bounds the writers taken afterwards.
func TestOpenLogsFollowTheDescriptorLimit(t *testing.T) {
	for _, c := range []struct {
		limit      uint64
		partitions int
		want       int
	}{
		{20_000, 64, 296},        // this machine's limit
		{1 << 19, 64, 8_176},     // a container's
		{1 << 20, 64, 16_368},    // another container's
		{1 << 20, 8, 16_384},     // capped
		{^uint64(0), 64, 16_384}, // unlimited
		{1_024, 64, 16},          // under the reserve: the floor
		{4_096, 0, 3_072},        // no partition count: one
	} {
		if got := openLogsWithin(c.limit, c.partitions); got != c.want {
			t.Errorf("limit %d, %d partitions: %d logs per writer, want %d", c.limit, c.partitions, got, c.want)
		}
	}
	if limit, ok := descriptorLimit(); ok {
		if n := OpenLogsPerWriter(64); uint64(n*64+reservedDescriptors) > max(limit, uint64(MinOpenLogs*64+reservedDescriptors)) {
			t.Errorf("%d logs per writer over 64 partitions exceed this process's limit of %d descriptors", n, limit)
		}
	}

	st, _ := newStore(t)
	st.SetMaxOpenLogs(40)
	w := take(t, st, 0, 1)
	for i := 0; i < 200; i++ {
		mustAppend(t, w, frag(fmt.Sprintf("s%04d", i), 100, 0, true, ins("id", "1")))
		if open := len(w.(*fileWriter).logs); open > 41 {
			t.Fatalf("%d logs open with a bound of 40", open)
		}
	}
	st.SetMaxOpenLogs(1)
	if st.maxOpenLogs != MinOpenLogs {
		t.Errorf("SetMaxOpenLogs(1) set %d, want the floor %d", st.maxOpenLogs, MinOpenLogs)
	}
}
