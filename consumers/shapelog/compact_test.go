package shapelog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// twin appends the same fragments to a store under test, which compacts,
// and to a reference store, which never does: the reference's rows and
// records are what every reader of the compacted one must get.
type twin struct {
	t        *testing.T
	st, ref  *FileStore
	w, refW  Writer
	epoch    uint64
	appended []fanout.Position // every fragment appended, in order
}

// snapshotRows is the shape's initial snapshot: rows 1 and 2, read at a
// pg_snapshot that saw xids below 50 (the test fragments' xid is their LSN).
var snapshotRows = []string{"1", "2"}

func newTwin(t *testing.T, handle string) *twin {
	t.Helper()
	tw := &twin{t: t, epoch: 1}
	tw.st, _ = newStore(t)
	tw.ref, _ = newStore(t)
	for _, dir := range []string{tw.st.Dir(), tw.ref.Dir()} {
		writeSnapshot(t, dir, handle, 1, "50:60:", snapshotRows...)
	}
	tw.w = take(t, tw.st, 0, 1)
	tw.refW = take(t, tw.ref, 0, 1)
	return tw
}

func writeSnapshot(t *testing.T, dir, handle string, gen uint64, vis string, ids ...string) {
	t.Helper()
	sw, err := NewSnapshotWriter(dir, handle, gen, "public.items", []string{"id", "title"}, []string{"id"}, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := sw.Add(row("id", id, "title", "snap"+id)); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := visibility.Parse(vis)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Complete(snap); err != nil {
		t.Fatal(err)
	}
}

func (tw *twin) append(fs ...*fanout.Fragment) {
	tw.t.Helper()
	if _, err := tw.w.Append(ctx, fs); err != nil {
		tw.t.Fatal(err)
	}
	if _, err := tw.refW.Append(ctx, fs); err != nil {
		tw.t.Fatal(err)
	}
	for _, f := range fs {
		tw.appended = append(tw.appended, f.Position())
	}
}

// restart abandons the writer as a crash would (no checkpoint, nothing
// closed) and takes the partition at the next epoch.
func (tw *twin) restart() {
	tw.t.Helper()
	tw.epoch++
	w, err := tw.st.Take(ctx, 0, tw.epoch)
	if err != nil {
		tw.t.Fatal(err)
	}
	tw.t.Cleanup(func() { w.Close() })
	tw.w = w
}

func (tw *twin) compact(handle string, opts CompactOptions) *CompactResult {
	tw.t.Helper()
	if opts.Retain == 0 {
		opts.Retain = time.Hour
	}
	res, err := tw.st.Compact(ctx, tw.w, handle, opts)
	if err != nil {
		tw.t.Fatal(err)
	}
	return res
}

// check compares the compacted store's rows, and a read of its whole
// chain, with the reference's.
func (tw *twin) check(handle, when string) {
	tw.t.Helper()
	want, err := Materialize(tw.ref.Dir(), handle, []string{"id"})
	if err != nil {
		tw.t.Fatal(err)
	}
	got, err := Materialize(tw.st.Dir(), handle, []string{"id"})
	if err != nil {
		tw.t.Fatalf("%s: %v", when, err)
	}
	if !reflect.DeepEqual(render(got), render(want)) {
		tw.t.Fatalf("%s: rows %v, want %v", when, render(got), render(want))
	}
}

func render(rows []fanout.Row) []string {
	out := []string{}
	for _, r := range rows {
		out = append(out, fmt.Sprintf("%s=%s", deref(r["id"]), deref(r["title"])))
	}
	return out
}

func deref(v *string) string {
	if v == nil {
		return "NULL"
	}
	return *v
}

// chainPositions reads the chain from cursor from, as a resuming reader
// does, and returns the positions passed on.
func chainPositions(t *testing.T, dir, handle string, from Cursor) ([]fanout.Position, Cursor) {
	t.Helper()
	chain, err := LoadChain(dir, handle)
	if err != nil {
		t.Fatal(err)
	}
	var got []fanout.Position
	end, err := chain.Read(from, func(e LogEntry, _ Cursor) error {
		got = append(got, e.Position)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, end
}

// after is the positions of want after p.
func after(want []fanout.Position, p fanout.Position) []fanout.Position {
	out := []fanout.Position{}
	for _, w := range want {
		if w.After(p) {
			out = append(out, w)
		}
	}
	return out
}

func title(id, t string) fanout.Change { return upd(nil, "id", id, "title", t) }
func insT(id, t string) fanout.Change  { return ins("id", id, "title", t) }
func readAllEntries(t *testing.T, dir, handle string) []fanout.Position {
	got, _ := chainPositions(t, dir, handle, Cursor{})
	return got
}

// A compaction keeps the rows, serves them from a base, switches the
// writer to the new log, and every reader resumes exactly: one that
// started before it (a cursor in generation 0's log), one resuming from a
// client offset, and a new writer of the partition.
func TestCompactionKeepsRowsAndReadersResumeExactly(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 40, 0, true, title("1", "seen-by-snapshot"))) // xid 40: in the snapshot's rows already
	tw.append(frag("sa", 100, 0, true, insT("3", "a"), title("1", "b")))
	tw.append(frag("sa", 200, 0, false, title("3", "c")), frag("sa", 200, 1, true, del("id", "2")))
	tw.append(frag("sa", 300, 0, true, title("3", "d"), title("3", "e")))
	// A reader that started before the compaction: after transaction 100.
	var mid Cursor
	if _, err := ReadLog(tw.st.Dir(), "sa", Cursor{}, func(e LogEntry, next Cursor) error {
		if e.Position == pos(100, 0) {
			mid = next
			return ErrStopRead
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A transaction still open at the compaction: its first part only.
	tw.append(frag("sa", 400, 0, false, insT("4", "f")))
	gen0Size := fileSize(logPath(tw.st.Dir(), "sa"))

	res := tw.compact("sa", CompactOptions{ChunkRows: 1})
	if res.Generation != 1 || res.Rows != 2 || res.TailBytes == 0 || res.SourceBytes <= res.BaseBytes {
		t.Fatalf("compaction result %+v: want generation 1 of 2 rows, the open transaction copied, fewer bytes than it replaced", res)
	}
	tw.check("sa", "after the compaction")
	chain, err := LoadChain(tw.st.Dir(), "sa")
	if err != nil {
		t.Fatal(err)
	}
	if g := chain.Current(); g.Number != 1 || len(g.Base.Chunks) != 2 || g.LastXid != 300 || !g.HasEnd ||
		g.End != (OpOffset{LSN: 300, Op: 2}) {
		t.Fatalf("current generation %+v: want 1, two chunks of one row, ending at transaction 300's second change", g)
	}
	var base []string
	chain.Current().Base.EachRow(func(r fanout.Row) error { base = append(base, *r["id"]+"="+*r["title"]); return nil })
	if !reflect.DeepEqual(base, []string{"1=b", "3=e"}) {
		t.Fatalf("base rows %v", base)
	}

	// The rest of the open transaction and more go to the new log only.
	tw.append(frag("sa", 400, 1, true, title("1", "g")))
	tw.append(frag("sa", 500, 0, true, del("id", "3")))
	if fileSize(logPath(tw.st.Dir(), "sa")) != gen0Size {
		t.Fatal("the writer still appended to generation 0's log after the switch")
	}
	tw.check("sa", "after appends to the new generation")
	got, _ := chainPositions(t, tw.st.Dir(), "sa", mid)
	if want := after(tw.appended, pos(100, 0)); !reflect.DeepEqual(got, want) {
		t.Fatalf("a reader resuming in generation 0's log read %v, want %v", got, want)
	}

	// Twice more, with a new owner of the partition between: the reader
	// of generation 0 still resumes exactly, and a redelivered fragment
	// from before X is skipped by the new writer.
	tw.compact("sa", CompactOptions{})
	tw.append(frag("sa", 600, 0, true, insT("6", "h")))
	tw.w.Close()
	tw.restart()
	if st, err := tw.w.Append(ctx, []*fanout.Fragment{frag("sa", 300, 0, true, title("3", "d"))}); err != nil || st.Skipped != 1 {
		t.Fatalf("redelivered fragment after a compaction: %+v %v, want it skipped", st, err)
	}
	tw.append(frag("sa", 700, 0, true, title("6", "i")))
	tw.compact("sa", CompactOptions{})
	tw.append(frag("sa", 800, 0, true, title("1", "j")))
	tw.check("sa", "after three compactions")
	got, _ = chainPositions(t, tw.st.Dir(), "sa", mid)
	if want := after(tw.appended, pos(100, 0)); !reflect.DeepEqual(got, want) {
		t.Fatalf("a reader resuming in generation 0's log after three compactions read %v, want %v", got, want)
	}
	chain, _ = LoadChain(tw.st.Dir(), "sa")
	if chain.Current().Number != 3 {
		t.Fatalf("current generation %d, want 3", chain.Current().Number)
	}
	var kept []uint64
	for _, g := range chain.Generations() {
		kept = append(kept, g.Number)
	}
	if !reflect.DeepEqual(kept, []uint64{0, 1, 2, 3}) {
		t.Fatalf("generations on disk %v: superseded ones are kept for their retain", kept)
	}
}

// A kill at any step of a compaction leaves the old form or the new one:
// the next owner appends where readers look, nothing is lost or repeated,
// and the next compaction removes what the stopped one left.
func TestCompactionCrashAtEveryStepLosesNothing(t *testing.T) {
	for _, step := range CompactSteps {
		t.Run(string(step), func(t *testing.T) {
			tw := newTwin(t, "sa")
			for i := 1; i <= 20; i++ {
				tw.append(frag("sa", uint64(100*i), 0, true, insT(fmt.Sprint(i%7+3), fmt.Sprint("v", i))))
			}
			tw.append(frag("sa", 2100, 0, false, title("3", "open")))
			crash := errors.New("simulated crash")
			_, err := tw.st.Compact(ctx, tw.w, "sa", CompactOptions{ChunkRows: 2, Retain: time.Hour, Fault: func(s CompactStep) error {
				if s == step {
					return crash
				}
				return nil
			}})
			if !errors.Is(err, crash) {
				t.Fatalf("compaction with a crash at %s: %v", step, err)
			}
			committed := step == StepCommitted || step == StepSwitched
			chain, err := LoadChain(tw.st.Dir(), "sa")
			if err != nil {
				t.Fatal(err)
			}
			if cur := chain.Current().Number; (cur == 1) != committed {
				t.Fatalf("after a crash at %s the current generation is %d", step, cur)
			}
			tw.check("sa", "after the crash")
			tw.restart()
			tw.append(frag("sa", 2100, 1, true, title("4", "closed")))
			// Redelivered: already in the logs.
			if st, err := tw.w.Append(ctx, []*fanout.Fragment{frag("sa", 2000, 0, true, insT("3", "v20"))}); err != nil || st.Skipped != 1 {
				t.Fatalf("redelivery after the crash: %+v %v", st, err)
			}
			tw.append(frag("sa", 2200, 0, true, del("id", "5")))
			tw.check("sa", "after the next owner's appends")
			if got := readAllEntries(t, tw.st.Dir(), "sa"); !reflect.DeepEqual(got, tw.appended) {
				t.Fatalf("the chain holds %v, want %v", got, tw.appended)
			}
			res := tw.compact("sa", CompactOptions{})
			tw.check("sa", "after the next compaction")
			ks, _ := listGenerations(tw.st.Dir(), "sa")
			for _, k := range ks {
				if _, ok, _ := readGenManifest(tw.st.Dir(), "sa", k); !ok {
					t.Fatalf("generation %d without a manifest left behind (generations %v, the last compaction made %d)", k, ks, res.Generation)
				}
			}
		})
	}
}

// Appends go on while a compaction runs: each compaction holds the
// writer's lock only to copy what was appended meanwhile, and the logs
// stay exact.
func TestCompactionBesideAppends(t *testing.T) {
	tw := newTwin(t, "sa")
	var mu sync.Mutex // twin is not safe for concurrent use: appends and compactions share it
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			lsn := uint64(1000 + 10*i)
			if i%5 == 0 { // a transaction in two appends
				tw.append(frag("sa", lsn, 0, false, title(fmt.Sprint(i%50), "x")))
				mu.Unlock()
				mu.Lock()
				tw.append(frag("sa", lsn, 1, true, title(fmt.Sprint(i%50+1), "y")))
			} else {
				tw.append(frag("sa", lsn, 0, true, insT(fmt.Sprint(i%50), fmt.Sprint("v", i))))
			}
			mu.Unlock()
		}
	}()
	var held time.Duration
	for n := 0; n < 5; n++ {
		time.Sleep(20 * time.Millisecond)
		// The compaction runs outside the mutex but for its switch, which
		// takes the writer's own lock: appends and it interleave.
		res, err := tw.st.Compact(ctx, tw.w, "sa", CompactOptions{Retain: time.Hour})
		if err != nil && !errors.Is(err, ErrNothingToCompact) {
			t.Fatal(err)
		}
		if res != nil {
			held = max(held, res.Held)
		}
	}
	close(stop)
	<-done
	tw.check("sa", "after compactions beside appends")
	if got := readAllEntries(t, tw.st.Dir(), "sa"); !reflect.DeepEqual(got, tw.appended) {
		t.Fatalf("the chain holds %d records, the reference %d (or in another order)", len(got), len(tw.appended))
	}
	t.Logf("longest hold of the writer's lock: %s", held)
}

// A client offset resumes in the generation whose log holds what follows
// it, while that generation is served; after its retain the read is
// refused (ErrExpired), and after twice that its files are gone.
func TestLocateAndExpireGenerations(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 100, 0, true, insT("3", "a"), upd(row("id", "3"), "id", "30", "title", "b")))
	res1 := tw.compact("sa", CompactOptions{Retain: time.Hour})
	tw.append(frag("sa", 200, 0, true, title("30", "c")))
	tw.compact("sa", CompactOptions{Retain: 2 * time.Hour})
	chain, err := LoadChain(tw.st.Dir(), "sa")
	if err != nil {
		t.Fatal(err)
	}
	g1, g2 := chain.Generation(1), chain.Generation(2)
	// Transaction 100's last operation is the insert half of a key change: op 3.
	if !g1.HasEnd || g1.End != (OpOffset{LSN: 100, Op: 3}) {
		t.Fatalf("generation 1 ends at %v (%v), want 100_3", g1.End, g1.HasEnd)
	}
	t1, t2 := g1.Completed, g2.Completed
	_ = res1
	for _, c := range []struct {
		o    OpOffset
		now  time.Time
		want uint64
		gone bool
	}{
		{OpOffset{100, 2}, t2, 0, false},                        // inside transaction 100: generation 0's log
		{OpOffset{100, 3}, t2, 1, false},                        // at its end: generation 1's log
		{OpOffset{150, 0}, t2, 1, false},                        // a watermark between
		{OpOffset{200, 0}, t2, 2, false},                        // generation 2
		{OpOffset{100, 2}, t1.Add(59 * time.Minute), 0, false},  // generation 0 is served for 1h after t1
		{OpOffset{100, 2}, t1.Add(61 * time.Minute), 0, true},   // then expired
		{OpOffset{150, 0}, t2.Add(119 * time.Minute), 1, false}, // generation 1 for 2h after t2
		{OpOffset{150, 0}, t2.Add(121 * time.Minute), 1, true},
		{OpOffset{900, 0}, t2.Add(1000 * time.Hour), 2, false}, // the current one always
	} {
		g, err := chain.LocateLog(c.o, c.now)
		if c.gone {
			if !errors.Is(err, ErrExpired) {
				t.Errorf("LocateLog(%s) at +%s: %v, %v, want expired", c.o, c.now.Sub(t1), g, err)
			}
			continue
		}
		if err != nil || g.Number != c.want {
			t.Errorf("LocateLog(%s) at +%s: %v, %v, want generation %d", c.o, c.now.Sub(t1), g, err, c.want)
		}
	}
	if _, err := chain.LocateBase(0, t1.Add(30*time.Minute)); err != nil {
		t.Errorf("the initial snapshot within its retain: %v", err)
	}
	if _, err := chain.LocateBase(0, t1.Add(2*time.Hour)); !errors.Is(err, ErrExpired) {
		t.Errorf("the initial snapshot after its retain: %v, want expired", err)
	}

	// Expiry: nothing before twice the retain, then generation 0.
	if ex, err := ExpireGenerations(tw.st.Dir(), "sa", t1.Add(119*time.Minute)); err != nil || len(ex.Removed) != 0 || ex.Next != t1.Add(2*time.Hour) {
		t.Fatalf("expiry before twice the retain: %+v %v", ex, err)
	}
	ex, err := ExpireGenerations(tw.st.Dir(), "sa", t1.Add(121*time.Minute))
	if err != nil || !reflect.DeepEqual(ex.Removed, []uint64{0}) || ex.Bytes == 0 {
		t.Fatalf("expiry of generation 0: %+v %v", ex, err)
	}
	if _, err := os.Stat(logPath(tw.st.Dir(), "sa")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("generation 0's log is still there")
	}
	if snap, err := CurrentSnapshot(tw.st.Dir(), "sa"); err != nil || snap == nil {
		t.Fatalf("the snapshot's manifest must stay: %v %v", snap, err)
	}
	if _, err := ReadLog(tw.st.Dir(), "sa", Cursor{}, func(LogEntry, Cursor) error { return nil }); !errors.Is(err, ErrExpired) {
		t.Fatalf("reading the removed log: %v, want ErrExpired", err)
	}
	tw.check("sa", "after generation 0 expired")
	ex, err = ExpireGenerations(tw.st.Dir(), "sa", t2.Add(5*time.Hour))
	if err != nil || !reflect.DeepEqual(ex.Removed, []uint64{1}) || !ex.Next.IsZero() {
		t.Fatalf("expiry of generation 1: %+v %v", ex, err)
	}
	if _, err := os.Stat(genDir(tw.st.Dir(), "sa", 1)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("generation 1's folder is still there")
	}
	tw.append(frag("sa", 300, 0, true, del("id", "1")))
	tw.check("sa", "after generation 1 expired")
}

// A newer owner that took the partition during a compaction fences its
// commit: the old writer's compaction fails, its generation never exists.
func TestCompactionIsFencedByANewerOwner(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 100, 0, true, insT("3", "a")))
	old := tw.w
	_, err := tw.st.Compact(ctx, old, "sa", CompactOptions{Retain: time.Hour, Fault: func(s CompactStep) error {
		if s == StepManifestReady {
			tw.restart() // the partition moves between the copy and the switch
		}
		return nil
	}})
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("compaction by a fenced writer: %v, want ErrFenced", err)
	}
	if _, ok, _ := readGenManifest(tw.st.Dir(), "sa", 1); ok {
		t.Fatal("the fenced compaction's generation was committed")
	}
	tw.append(frag("sa", 200, 0, true, title("3", "b")))
	tw.check("sa", "after a fenced compaction")
	if res := tw.compact("sa", CompactOptions{}); res.Generation != 1 {
		t.Fatalf("the new owner's compaction made generation %d, want 1 (the fenced one's folder removed)", res.Generation)
	}
	tw.check("sa", "after the new owner's compaction")
}

// A crash after records were journaled but before they reached the new
// generation's log: the next owner's replay writes them there.
func TestJournalReplayGoesToTheCurrentGeneration(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 100, 0, true, insT("3", "a")))
	tw.compact("sa", CompactOptions{})
	path := genLogPath(tw.st.Dir(), "sa", 1)
	before := fileSize(path)
	tw.append(frag("sa", 200, 0, true, title("3", "b")), frag("sa", 300, 0, true, insT("4", "c")))
	// The page cache lost what the journal holds.
	if err := os.Truncate(path, before); err != nil {
		t.Fatal(err)
	}
	tw.restart()
	if fileSize(path) <= before {
		t.Fatal("the journal was not replayed into generation 1's log")
	}
	if fileSize(logPath(tw.st.Dir(), "sa")) == 0 {
		t.Fatal("generation 0's log is gone")
	}
	tw.check("sa", "after the replay")
}

// The initial snapshot retaken after a compaction: the bases built on the
// old snapshot are no longer served; the new snapshot is read with every
// log from generation 0's on, until a compaction builds on it.
func TestCompactionAfterTheSnapshotIsRetaken(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 100, 0, true, insT("3", "a")))
	tw.compact("sa", CompactOptions{})
	tw.append(frag("sa", 200, 0, true, insT("4", "b")))
	// Snapshot 2 saw xids below 150: transaction 100 is in its rows.
	for _, dir := range []string{tw.st.Dir(), tw.ref.Dir()} {
		writeSnapshot(t, dir, "sa", 2, "150:160:", "1", "3")
	}
	chain, _ := LoadChain(tw.st.Dir(), "sa")
	if chain.Current().Number != 0 {
		t.Fatalf("the current generation after a retake is %d, want 0", chain.Current().Number)
	}
	tw.check("sa", "after the retake")
	if res := tw.compact("sa", CompactOptions{}); res.Generation != 2 {
		t.Fatalf("compaction after the retake made generation %d", res.Generation)
	}
	chain, _ = LoadChain(tw.st.Dir(), "sa")
	if g := chain.Current(); g.Number != 2 || g.Base.Generation != 2 {
		t.Fatalf("current generation %d built on snapshot %d, want 2 on 2", g.Number, g.Base.Generation)
	}
	tw.append(frag("sa", 300, 0, true, del("id", "1")))
	tw.check("sa", "after a compaction on the new snapshot")
}

// ScanLog sees each record of the chain once: generation 0's log up to
// where generation 1's base ends, then generation 1's log.
func TestScanLogAcrossGenerations(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 100, 0, true, insT("3", "a")), frag("sa", 200, 0, false, insT("4", "b")))
	tw.compact("sa", CompactOptions{})
	tw.append(frag("sa", 200, 1, true, insT("5", "c")))
	var got []string
	if err := ScanLog(tw.st.Dir(), "sa", func(r LogRecord) error {
		got = append(got, fmt.Sprintf("%d:%s:%v", r.Generation, r.Position, r.Accepted))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"0:0/64#0:true", "1:0/C8#0:true", "1:0/C8#1:true"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ScanLog: %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(genDir(tw.st.Dir(), "sa", 1), manifestName)); err != nil {
		t.Fatal(err)
	}
}

// A power loss during or after a compaction loses no acked batch: what a
// base is built from is fsynced first, the new log before its manifest is
// renamed, and what is appended after the switch is in the journal, which
// the next owner replays into the current generation's log.
func TestPowerLossAroundACompactionLosesNoAckedBatch(t *testing.T) {
	for _, step := range append(CompactSteps, "none") {
		t.Run(string(step), func(t *testing.T) {
			d := watchDisk(t)
			tw := newTwin(t, "sa")
			for i := 1; i <= 10; i++ {
				tw.append(frag("sa", uint64(100*i), 0, true, insT(fmt.Sprint(i%4+3), fmt.Sprint("v", i))))
			}
			stopped := errors.New("power lost")
			_, err := tw.st.Compact(ctx, tw.w, "sa", CompactOptions{Retain: time.Hour, Fault: func(s CompactStep) error {
				if s == step {
					return stopped
				}
				return nil
			}})
			if step == "none" {
				if err != nil {
					t.Fatal(err)
				}
				tw.append(frag("sa", 1100, 0, true, title("3", "after")))
			} else if !errors.Is(err, stopped) {
				t.Fatalf("compaction: %v", err)
			}
			d.powerLoss(t, tw.st.Dir())
			tw.restart()
			tw.check("sa", "after the power loss")
			if got := readAllEntries(t, tw.st.Dir(), "sa"); !reflect.DeepEqual(got, tw.appended) {
				t.Fatalf("the chain holds %v, want %v", got, tw.appended)
			}
		})
	}
}

// Generation 0 stays in the chain for its snapshot's manifest; once the
// generations after it expired it is neither served nor read.
func TestGenerationZeroWithoutItsSuccessorsIsExpired(t *testing.T) {
	tw := newTwin(t, "sa")
	tw.append(frag("sa", 100, 0, true, insT("3", "a")))
	tw.compact("sa", CompactOptions{Retain: time.Millisecond})
	tw.append(frag("sa", 200, 0, true, insT("4", "b")))
	tw.compact("sa", CompactOptions{Retain: time.Millisecond})
	tw.append(frag("sa", 300, 0, true, insT("5", "c")))
	tw.compact("sa", CompactOptions{Retain: time.Millisecond})
	time.Sleep(5 * time.Millisecond)
	if ex, err := ExpireGenerations(tw.st.Dir(), "sa", time.Now()); err != nil || !reflect.DeepEqual(ex.Removed, []uint64{0, 1, 2}) {
		t.Fatalf("expiry: %+v %v", ex, err)
	}
	chain, err := LoadChain(tw.st.Dir(), "sa")
	if err != nil {
		t.Fatal(err)
	}
	if g := chain.Generation(0); g == nil || chain.Served(g, time.Now().Add(-time.Hour)) {
		t.Fatalf("generation 0 without its successors is served: %+v", g)
	}
	if _, err := chain.Read(Cursor{}, func(LogEntry, Cursor) error { return nil }); !errors.Is(err, ErrExpired) {
		t.Fatalf("reading generation 0 without its successors: %v, want ErrExpired", err)
	}
	if _, err := chain.LocateLog(OpOffset{LSN: 50}, time.Now()); !errors.Is(err, ErrExpired) {
		t.Fatalf("an offset before generation 1: %v, want ErrExpired", err)
	}
	tw.check("sa", "after the expiry")
}

// The same crash at every step, with appends going on: the switch rides
// on a batch, and a crash inside it fails that batch. The batch was not
// acked, so it is delivered again to the next owner, which ends exact.
func TestCompactionCrashAtEveryStepWhileAppending(t *testing.T) {
	for _, step := range CompactSteps {
		t.Run(string(step), func(t *testing.T) {
			tw := newTwin(t, "sa")
			for i := 1; i <= 20; i++ {
				tw.append(frag("sa", uint64(100*i), 0, true, insT(fmt.Sprint(i%7+3), fmt.Sprint("v", i))))
			}
			crash := errors.New("simulated crash")
			done := make(chan error, 1)
			go func() {
				_, err := tw.st.Compact(ctx, tw.w, "sa", CompactOptions{ChunkRows: 2, Retain: time.Hour, Fault: func(s CompactStep) error {
					if s == step {
						return crash
					}
					return nil
				}})
				done <- err
			}()
			var failed *fanout.Fragment // the batch the crash failed: delivered again
			lsn := uint64(3000)
			for running := true; running; lsn += 100 {
				select {
				case err := <-done:
					if !errors.Is(err, crash) {
						t.Fatalf("compaction with a crash at %s: %v", step, err)
					}
					running = false
					continue
				default:
				}
				f := frag("sa", lsn, 0, true, title(fmt.Sprint(lsn%5+3), fmt.Sprint("a", lsn)))
				if failed != nil {
					continue // the writer is dead: wait for the compaction to return
				}
				if _, err := tw.w.Append(ctx, []*fanout.Fragment{f}); err != nil {
					if !errors.Is(err, crash) {
						t.Fatalf("append beside a compaction crashing at %s: %v", step, err)
					}
					failed = f
					continue
				}
				if _, err := tw.refW.Append(ctx, []*fanout.Fragment{f}); err != nil {
					t.Fatal(err)
				}
				tw.appended = append(tw.appended, f.Position())
				time.Sleep(time.Millisecond) // a batch every millisecond or so
			}
			tw.restart()
			if failed != nil {
				tw.append(failed) // redelivered: the journal may hold it already
			}
			tw.append(frag("sa", lsn+100, 0, true, del("id", "5")))
			tw.check("sa", "after the crash and the next owner's appends")
			if got := readAllEntries(t, tw.st.Dir(), "sa"); !reflect.DeepEqual(got, tw.appended) {
				t.Fatalf("the chain holds %v, want %v", got, tw.appended)
			}
			tw.compact("sa", CompactOptions{})
			tw.check("sa", "after the next compaction")
		})
	}
}

// A power loss after a switch that rode on a batch, with a checkpoint
// between the compaction's copy and the switch: the records appended in
// between are durable only in the old log (the journal was emptied), so
// the switch must put them into the journal with its batch; the new log
// is fsynced only at the next checkpoint. The next owner replays them
// into the new log.
func TestPowerLossAfterASwitchOnABatchLosesNothing(t *testing.T) {
	d := watchDisk(t)
	tw := newTwin(t, "sa")
	for i := 1; i <= 10; i++ {
		tw.append(frag("sa", uint64(100*i), 0, true, insT(fmt.Sprint(i%4+3), fmt.Sprint("v", i))))
	}
	mustAppend(t, tw.w, frag("sz", 1000, 0, true, insT("1", "other"))) // another shape, to remove
	copied := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := tw.st.Compact(ctx, tw.w, "sa", CompactOptions{Retain: time.Hour, Fault: func(s CompactStep) error {
			if s == StepManifestReady {
				// Appended after the copy, then a checkpoint (Remove
				// makes one) empties the journal.
				tw.append(frag("sa", 2000, 0, true, title("3", "between")), frag("sa", 2100, 0, true, title("4", "between")))
				if err := tw.w.Remove(ctx, "sz"); err != nil {
					return err
				}
				close(copied)
			}
			return nil
		}})
		done <- err
	}()
	<-copied
	tw.append(frag("sa", 2200, 0, true, title("5", "the batch the switch rides on")))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if chain, _ := LoadChain(tw.st.Dir(), "sa"); chain.Current().Number != 1 {
		t.Fatal("the switch did not happen")
	}
	d.powerLoss(t, tw.st.Dir())
	tw.restart()
	tw.check("sa", "after the power loss")
	if got := readAllEntries(t, tw.st.Dir(), "sa"); !reflect.DeepEqual(got, tw.appended) {
		t.Fatalf("the chain holds %v, want %v", got, tw.appended)
	}
}
