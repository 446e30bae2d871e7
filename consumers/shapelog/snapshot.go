package shapelog

// A shape's initial snapshot, as stored beside its log, and the API that
// readers (fanoutctl shape rows, Materialize, the HTTP shape API) use.
//
// Reading a shape, Electric's way:
//
//	snap, err := shapelog.CurrentSnapshot(dir, handle) // nil, nil: no complete snapshot yet
//	for i := range snap.Chunks {                        // offsets 0_0, 0_1, ...
//		err = snap.ReadChunk(i, func(row fanout.Row) error { ... })
//	}
//	// then "snapshot-end" with snap.Snapshot.Xmin, .Xmax, .Xip
//	err = shapelog.ReadLog(dir, handle, shapelog.Cursor{}, func(f *fanout.Fragment, next shapelog.Cursor) error {
//		if snap.Seen(f) {
//			return nil // already in the snapshot's rows: skip it
//		}
//		... // offsets <f.CommitLSN decimal>_<op index>
//	})
//
// Serve a shape only when its state in KV is ready (fanout/shapestate) and
// snap.Generation equals that state's Generation; otherwise answer "not
// ready" (the log may hold transactions no snapshot decides about yet). A
// generation's files are written under <dir>/shapes/<handle>/snapshot/g<N>/;
// its manifest is written last (fsynced, renamed into place), so a
// half-written generation is never found by CurrentSnapshot. A newer
// complete generation replaces an older one (a crash between completing and
// marking ready redoes the snapshot): a reader that sees Generation change
// must start the shape again from offset -1.
//
// Rows are fanout.Row values in Postgres text format (NULL is nil), with the
// shape's columns (its projection, primary key included), keyed by
// Snapshot.PrimaryKey. Each row was accepted by the shape's compiled where
// clause (the same matcher that routes streamed changes).

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// Snapshot is one complete generation of a shape's initial snapshot.
type Snapshot struct {
	Handle     string `json:"handle"`
	Generation uint64 `json:"generation"`
	// Snapshot is the pg_current_snapshot() the rows were read at: it
	// decides which logged transactions are already in the rows (Seen).
	Snapshot visibility.Snapshot `json:"snapshot"`
	// Columns are the stored columns, in the order of each stored row.
	Columns    []string        `json:"columns"`
	PrimaryKey []string        `json:"primary_key"`
	Rows       int64           `json:"rows"`
	Bytes      int64           `json:"bytes"`
	Chunks     []SnapshotChunk `json:"chunks"`
	Completed  time.Time       `json:"completed"`

	dir string // the generation's folder
}

// SnapshotChunk is one chunk file: Electric's snapshot offset 0_<index>.
type SnapshotChunk struct {
	Rows  int64 `json:"rows"`
	Bytes int64 `json:"bytes"`
}

// Seen reports whether f's transaction was visible to the snapshot, so its
// changes are already in the snapshot's rows and a reader must skip f.
// Decided by xid against xmin/xmax/xip, never by LSN.
func (s *Snapshot) Seen(f *fanout.Fragment) bool { return s.Snapshot.Visible(f.Xid) }

// CurrentSnapshot returns the newest complete snapshot of handle under dir,
// or nil and no error when there is none (never taken, or still being
// written).
func CurrentSnapshot(dir, handle string) (*Snapshot, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	gens, err := snapshotGenerations(dir, handle)
	if err != nil {
		return nil, err
	}
	for i := len(gens) - 1; i >= 0; i-- {
		gdir := generationDir(dir, handle, gens[i])
		data, err := os.ReadFile(filepath.Join(gdir, manifestName))
		if errors.Is(err, os.ErrNotExist) {
			continue // incomplete: never served
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot of shape %s: read manifest: %w", handle, err)
		}
		var s Snapshot
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, fmt.Errorf("snapshot of shape %s generation %d: manifest %s is not valid JSON: %w (remove the folder; the snapshot is taken again)", handle, gens[i], gdir, err)
		}
		s.dir = gdir
		return &s, nil
	}
	return nil, nil
}

// ReadChunk calls fn for each row of chunk i, in stored order. fn may keep
// the row.
func (s *Snapshot) ReadChunk(i int, fn func(row fanout.Row) error) error {
	if i < 0 || i >= len(s.Chunks) {
		return fmt.Errorf("snapshot of shape %s generation %d has %d chunks, not chunk %d", s.Handle, s.Generation, len(s.Chunks), i)
	}
	path := filepath.Join(s.dir, chunkName(i))
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot of shape %s: open chunk %d: %w (a newer generation may have replaced it: read the shape again)", s.Handle, i, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() != s.Chunks[i].Bytes {
		return fmt.Errorf("snapshot of shape %s generation %d: chunk %d is %d bytes, its manifest says %d (storage damaged?)", s.Handle, s.Generation, i, st.Size(), s.Chunks[i].Bytes)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<30)
	var n int64
	for sc.Scan() {
		var vals []*string
		if err := json.Unmarshal(sc.Bytes(), &vals); err != nil || len(vals) != len(s.Columns) {
			return fmt.Errorf("snapshot of shape %s: chunk %d row %d is not a row of %d columns: %v", s.Handle, i, n, len(s.Columns), err)
		}
		row := make(fanout.Row, len(vals))
		for j, c := range s.Columns {
			row[c] = vals[j]
		}
		if err := fn(row); err != nil {
			return err
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("snapshot of shape %s: read chunk %d: %w", s.Handle, i, err)
	}
	if n != s.Chunks[i].Rows {
		return fmt.Errorf("snapshot of shape %s generation %d: chunk %d holds %d rows, its manifest says %d", s.Handle, s.Generation, i, n, s.Chunks[i].Rows)
	}
	return nil
}

// EachRow calls fn for every row of every chunk, in order.
func (s *Snapshot) EachRow(fn func(row fanout.Row) error) error {
	for i := range s.Chunks {
		if err := s.ReadChunk(i, fn); err != nil {
			return err
		}
	}
	return nil
}

const manifestName = "manifest.json"

func snapshotRoot(dir, handle string) string { return filepath.Join(dir, "shapes", handle, "snapshot") }

func generationDir(dir, handle string, gen uint64) string {
	return filepath.Join(snapshotRoot(dir, handle), "g"+strconv.FormatUint(gen, 10))
}

func chunkName(i int) string { return fmt.Sprintf("chunk-%06d.jsonl", i) }

// snapshotGenerations lists the generation folders of handle, ascending.
func snapshotGenerations(dir, handle string) ([]uint64, error) {
	ents, err := os.ReadDir(snapshotRoot(dir, handle))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: list generations: %w", handle, err)
	}
	var gens []uint64
	for _, e := range ents {
		if g, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), "g"), 10, 64); err == nil && strings.HasPrefix(e.Name(), "g") {
			gens = append(gens, g)
		}
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i] < gens[j] })
	return gens, nil
}
