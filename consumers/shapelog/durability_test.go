package shapelog

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// disk models what survives a power loss: a file keeps only what it held at
// its last fsync (syncFile), an appended file being the only kind the store
// writes after creation. Directories are not modelled.
type disk struct {
	mu     sync.Mutex
	synced map[string]int64 // path -> size at the last fsync
	log    []string         // the paths fsynced, in order
	onSync func(path string)
	// syncfsCalls counts whole-file-system syncs (syncFS).
	syncfsCalls int
}

func watchDisk(t *testing.T) *disk {
	d := &disk{synced: map[string]int64{}}
	orig := syncFile
	syncFile = func(f *os.File) error {
		if err := orig(f); err != nil {
			return err
		}
		fi, err := f.Stat()
		d.mu.Lock()
		if err == nil && !fi.IsDir() {
			d.synced[f.Name()] = fi.Size()
		}
		d.log = append(d.log, f.Name())
		hook := d.onSync
		d.mu.Unlock()
		if hook != nil {
			hook(f.Name())
		}
		return nil
	}
	origFS := syncFS
	// A syncfs makes every file of the store durable as it is now.
	syncFS = func(f *os.File) error {
		if err := origFS(f); err != nil {
			return err
		}
		d.mu.Lock()
		d.syncfsCalls++
		var paths []string
		for _, pattern := range durablePatterns {
			found, _ := filepath.Glob(filepath.Join(f.Name(), pattern))
			paths = append(paths, found...)
		}
		for _, p := range paths {
			if fi, err := os.Stat(p); err == nil {
				d.synced[p] = fi.Size()
			}
			d.log = append(d.log, p)
		}
		hook := d.onSync
		d.mu.Unlock()
		if hook != nil {
			for _, p := range paths {
				hook(p)
			}
		}
		return nil
	}
	t.Cleanup(func() { syncFile, syncFS = orig, origFS })
	return d
}

// durablePatterns are the files whose durability the model follows: every
// generation's log (compact_test.go) and the journals.
var durablePatterns = []string{"shapes/*/log", "shapes/*/compact/c*/log", "partitions/*/journal-*"}

// powerLoss cuts every shape log and journal under dir back to what it held
// at its last fsync.
func (d *disk) powerLoss(t *testing.T, dir string) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, pattern := range durablePatterns {
		paths, _ := filepath.Glob(filepath.Join(dir, pattern))
		for _, p := range paths {
			if err := os.Truncate(p, d.synced[p]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (d *disk) fsynced(path string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.log {
		if p == path {
			return true
		}
	}
	return false
}

// A consumer appends and acks (the batches are in its journal; the logs are
// in the page cache only), then dies. The next owner finds every record in
// the logs already, so it replays nothing, and removes the journal. Then the
// machine loses power. Every acked batch must still be there: the next owner
// made the logs durable before the journal went (issue 19, item 1).
func TestPowerLossAfterATakeoverLosesNoAckedBatch(t *testing.T) {
	d := watchDisk(t)
	st, _ := newStore(t)
	w1, err := st.Take(ctx, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, w1, frag("sa", 100, 0, true, ins("id", "1")), frag("sb", 100, 0, true, ins("id", "1")))
	mustAppend(t, w1, frag("sa", 200, 0, true, ins("id", "2")))
	// w1 dies: no Close, no checkpoint.
	journal := journalPath(st.Dir(), 3, 1)
	d.hook(func(path string) {
		if strings.HasSuffix(path, "/log") {
			if _, err := os.Stat(journal); err != nil {
				t.Errorf("log %s fsynced after the journal it is replayed from was removed", path)
			}
		}
	})
	take(t, st, 3, 2)
	d.hook(nil)
	for _, h := range []string{"sa", "sb"} {
		if !d.fsynced(logPath(st.Dir(), h)) {
			t.Errorf("the new owner removed the journal without fsyncing the log of %s, which it names", h)
		}
	}
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Fatalf("journal of epoch 1 still there after the takeover: %v", err)
	}

	d.powerLoss(t, st.Dir())
	take(t, st, 3, 3)
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Fatalf("sa after a power loss: %v, want [1 2]", got)
	}
	if got := ids(t, st, "sb"); !reflect.DeepEqual(got, []string{"1"}) {
		t.Fatalf("sb after a power loss: %v, want [1]", got)
	}
}

// A new partition's directory entry is made durable in partitions/ (item 8).
func TestANewPartitionDirectoryIsDurable(t *testing.T) {
	d := watchDisk(t)
	st, _ := newStore(t)
	take(t, st, 9, 1)
	if !d.fsynced(filepath.Join(st.Dir(), "partitions")) {
		t.Fatal("partitions/ was not fsynced after partitions/9 was created in it")
	}
}

// A slow Take of an older epoch cannot overwrite a newer epoch (item 7).
// The older Take is held between writing its epoch file and installing it;
// a newer Take runs meanwhile.
func TestOwnerEpochNeverMovesBackwards(t *testing.T) {
	d := watchDisk(t)
	st, _ := newStore(t)
	newer := make(chan error, 1)
	var fired atomic.Bool
	d.hook(func(path string) {
		if !strings.Contains(filepath.Base(path), "epoch-") || !fired.CompareAndSwap(false, true) {
			return
		}
		func() {
			go func() {
				w, err := st.Take(ctx, 4, 2)
				if err == nil {
					w.Close()
				}
				newer <- err
			}()
			select { // the newer Take finishes first, unless the lock holds it
			case err := <-newer:
				newer <- err
			case <-time.After(300 * time.Millisecond):
			}
		}()
	})
	w1, err := st.Take(ctx, 4, 1)
	if err == nil {
		w1.Close()
	}
	d.hook(nil)
	if err := <-newer; err != nil {
		t.Fatalf("the newer Take failed: %v", err)
	}
	cur, err := readEpoch(st.Dir(), 4)
	if err != nil || cur != 2 {
		t.Fatalf("owner epoch after Take(1) raced Take(2): %d (%v), want 2", cur, err)
	}
}

// A new owner does not recover the logs while an older writer is inside a
// batch (it could truncate a frame that writer is appending): it waits for
// the batch to end, and that writer's next batch is fenced (item 3).
func TestTakeWaitsForAnOlderWritersBatch(t *testing.T) {
	d := watchDisk(t)
	st, _ := newStore(t)
	w1 := take(t, st, 2, 1)
	inBatch, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // before w1.Close, also when the test fails
	var once sync.Once
	d.hook(func(path string) {
		if strings.Contains(path, "journal-1") {
			once.Do(func() { close(inBatch); <-release })
		}
	})
	appended := make(chan error, 1)
	go func() {
		_, err := w1.Append(ctx, fragsOf(frag("sa", 100, 0, true, ins("id", "1"))))
		appended <- err
	}()
	<-inBatch
	took := make(chan time.Time, 1)
	go func() {
		w2, err := st.Take(ctx, 2, 2)
		if err != nil {
			t.Error(err)
		} else {
			t.Cleanup(func() { w2.Close() })
		}
		took <- time.Now()
	}()
	select {
	case <-took:
		t.Fatal("the new owner took the partition while the older writer was inside a batch")
	case <-time.After(500 * time.Millisecond):
	}
	released := time.Now()
	d.hook(nil)
	releaseOnce.Do(func() { close(release) })
	if err := <-appended; err != nil {
		t.Fatalf("the batch in progress: %v", err)
	}
	if at := <-took; at.Before(released) {
		t.Fatal("Take returned before the older batch ended")
	}
	if got := ids(t, st, "sa"); !reflect.DeepEqual(got, []string{"1"}) {
		t.Fatalf("rows %v, want [1] (the batch written before the takeover recovered)", got)
	}
	if _, err := w1.Append(ctx, fragsOf(frag("sa", 200, 0, true, ins("id", "2")))); !errors.Is(err, ErrFenced) {
		t.Fatalf("the older writer's next batch: %v, want fenced", err)
	}
}

// Damage in the middle of a log, with intact records after it, is not a torn
// tail: nothing is truncated, readers fail loudly, and the writer reports a
// ShapeError for that shape only, so it can be set aside (items 6 and 9).
func TestDamageInsideALogIsNotTruncated(t *testing.T) {
	st, _ := newStore(t)
	w := take(t, st, 1, 1)
	mustAppend(t, w, frag("sa", 100, 0, true, ins("id", "1")))
	mustAppend(t, w, frag("sa", 200, 0, true, ins("id", "2")))
	mustAppend(t, w, frag("sa", 300, 0, true, ins("id", "3")))
	w.Close()
	path := logPath(st.Dir(), "sa")
	data, _ := os.ReadFile(path)
	second := 0
	ScanLog(st.Dir(), "sa", func(r LogRecord) error {
		if r.Position.CommitLSN == 200 {
			second = int(r.Offset)
		}
		return nil
	})
	data[second+headerSize+recordHeaderSize+3] ^= 0xff // one byte of the second record's body
	os.WriteFile(path, data, 0o644)

	var corrupt *CorruptError
	if _, err := Materialize(st.Dir(), "sa", []string{"id"}); !errors.As(err, &corrupt) {
		t.Fatalf("Materialize of a log damaged in the middle: %v, want a CorruptError", err)
	}
	w2 := take(t, st, 1, 2)
	_, err := w2.Append(ctx, fragsOf(frag("sa", 400, 0, true, ins("id", "4")), frag("sb", 400, 0, true, ins("id", "4"))))
	var shapeErr *ShapeError
	if !errors.As(err, &shapeErr) || shapeErr.Shape != "sa" || !errors.As(err, &corrupt) {
		t.Fatalf("Append to a damaged log: %v, want a ShapeError of sa", err)
	}
	if after, _ := os.ReadFile(path); len(after) != len(data) {
		t.Fatalf("the damaged log was cut from %d to %d bytes", len(data), len(after))
	}
	// Without the damaged shape the batch goes through.
	mustAppend(t, w2, frag("sb", 400, 0, true, ins("id", "4")))
	if got := ids(t, st, "sb"); !reflect.DeepEqual(got, []string{"4"}) {
		t.Fatalf("sb rows %v", got)
	}
}

// A record that passes its checksum but does not decode is a ShapeError too.
func TestUndecodableRecordIsAShapeError(t *testing.T) {
	st, _ := newStore(t)
	os.MkdirAll(filepath.Dir(logPath(st.Dir(), "sa")), 0o755)
	bad, _ := appendFrame(nil, []byte{0x7f, 1, 2, 3})
	os.WriteFile(logPath(st.Dir(), "sa"), bad, 0o644)
	w := take(t, st, 1, 1)
	_, err := w.Append(ctx, fragsOf(frag("sa", 100, 0, true, ins("id", "1"))))
	var shapeErr *ShapeError
	if !errors.As(err, &shapeErr) || shapeErr.Shape != "sa" {
		t.Fatalf("Append to a log with an undecodable record: %v, want a ShapeError", err)
	}
}

func fragsOf(fs ...*fanout.Fragment) []*fanout.Fragment { return fs }

func (d *disk) hook(fn func(path string)) {
	d.mu.Lock()
	d.onSync = fn
	d.mu.Unlock()
}

// count is how many times path was fsynced.
func (d *disk) count(path string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, p := range d.log {
		if p == path {
			n++
		}
	}
	return n
}

func TestKernelAtLeast(t *testing.T) {
	for release, want := range map[string]bool{"6.18.44-fc-v1098": true, "5.8.0": true, "5.10": true, "5.7.19-generic": false, "4.19.0-27-amd64": false, "5.8-rc1": true, "x": false, "": false} {
		if got := kernelAtLeast(release, 5, 8); got != want {
			t.Errorf("kernelAtLeast(%q, 5, 8) = %v, want %v", release, got, want)
		}
	}
}
