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
//
// The chunk format is Snapshot.Version (SnapshotVersion is written; a reader
// refuses a version it does not know). Version 2: each row is stored as the
// Electric snapshot-row message the HTTP API serves (consumers/shapemsg),
// one per line, every line after a chunk's first starting with a comma, so
// "[" + chunk + "]" is the JSON array of its messages and the API serves a
// chunk by copying its file (OpenChunk). Version 1 (manifests without a
// version): each row is a JSON array of its values in Columns order.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// Snapshot is one complete generation of a shape's initial snapshot.
type Snapshot struct {
	// Version is the chunk format (0 in manifests written before versions: 1).
	Version    int    `json:"version,omitempty"`
	Handle     string `json:"handle"`
	Generation uint64 `json:"generation"`
	// Table is the shape's schema.table, the relation of its messages.
	Table string `json:"table,omitempty"`
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
		if s.Version == 0 {
			s.Version = 1
		}
		if s.Version > SnapshotVersion {
			return nil, fmt.Errorf("snapshot of shape %s generation %d: chunk format version %d is newer than this build reads (%d): upgrade this service, or remove %s and the snapshot is taken again", handle, gens[i], s.Version, SnapshotVersion, gdir)
		}
		s.dir = gdir
		return &s, nil
	}
	return nil, nil
}

// SnapshotVersion is the chunk format this build writes (see the top of this file).
const SnapshotVersion = 2

// LatestGeneration is the highest generation of handle with files under
// dir, complete or not (0 for none): a new generation must be above it.
func LatestGeneration(dir, handle string) (uint64, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return 0, err
	}
	gens, err := snapshotGenerations(dir, handle)
	if err != nil || len(gens) == 0 {
		return 0, err
	}
	return gens[len(gens)-1], nil
}

// Replaced reports whether s is no longer on disk (a newer generation
// completed and removed it, or the shape was removed): a reader must look
// the current snapshot up again.
func (s *Snapshot) Replaced() bool {
	_, err := os.Stat(filepath.Join(s.dir, manifestName))
	return err != nil
}

// Messages reports whether the chunks hold encoded messages (version 2),
// so OpenChunk may serve them.
func (s *Snapshot) Messages() bool { return s.Version >= 2 }

// OpenChunk opens chunk i of a version 2 snapshot for copying: its Bytes
// bytes are the messages of its rows, comma separated (a JSON array's
// inside). The caller closes the file.
func (s *Snapshot) OpenChunk(i int) (*os.File, error) {
	if !s.Messages() {
		return nil, fmt.Errorf("snapshot of shape %s generation %d: chunk format version %d stores rows, not messages", s.Handle, s.Generation, s.Version)
	}
	f, err := s.openChunk(i)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (s *Snapshot) openChunk(i int) (*os.File, error) {
	if i < 0 || i >= len(s.Chunks) {
		return nil, fmt.Errorf("snapshot of shape %s generation %d has %d chunks, not chunk %d", s.Handle, s.Generation, len(s.Chunks), i)
	}
	f, err := os.Open(filepath.Join(s.dir, chunkName(i)))
	if err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: open chunk %d: %w (a newer generation may have replaced it: read the shape again)", s.Handle, i, err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != s.Chunks[i].Bytes {
		f.Close()
		if err == nil {
			err = fmt.Errorf("it is %d bytes, its manifest says %d (storage damaged?)", st.Size(), s.Chunks[i].Bytes)
		}
		return nil, fmt.Errorf("snapshot of shape %s generation %d: chunk %d: %w", s.Handle, s.Generation, i, err)
	}
	return f, nil
}

// ReadChunk calls fn for each row of chunk i, in stored order. fn may keep
// the row.
func (s *Snapshot) ReadChunk(i int, fn func(row fanout.Row) error) error {
	f, err := s.openChunk(i)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<30)
	var n int64
	for sc.Scan() {
		row, err := s.decodeRow(sc.Bytes(), n == 0)
		if err != nil {
			return fmt.Errorf("snapshot of shape %s generation %d: chunk %d row %d: %w", s.Handle, s.Generation, i, n, err)
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

// decodeRow reads one stored line of s's format.
func (s *Snapshot) decodeRow(line []byte, first bool) (fanout.Row, error) {
	if s.Version == 1 {
		var vals []*string
		if err := json.Unmarshal(line, &vals); err != nil || len(vals) != len(s.Columns) {
			return nil, fmt.Errorf("not a row of %d columns: %v", len(s.Columns), err)
		}
		row := make(fanout.Row, len(vals))
		for j, c := range s.Columns {
			row[c] = vals[j]
		}
		return row, nil
	}
	if !first {
		if len(line) == 0 || line[0] != ',' {
			return nil, errors.New("a row after the first does not start with a comma")
		}
		line = line[1:]
	}
	var msg struct {
		Value fanout.Row `json:"value"`
	}
	if err := json.Unmarshal(line, &msg); err != nil || len(msg.Value) != len(s.Columns) {
		return nil, fmt.Errorf("not a message with a value of %d columns: %v", len(s.Columns), err)
	}
	return msg.Value, nil
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
	gens, err := numberedEntries(snapshotRoot(dir, handle), "g")
	if err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: list generations: %w", handle, err)
	}
	return gens, nil
}

// ReadMessages calls fn with the stored message of each row from row index
// from on (rows count from 0 across chunks), in order, until the last row
// or fn returns ErrStopRead. The message is only valid during the call; it
// has no separator or line end. Version 2 snapshots only (Messages).
func (s *Snapshot) ReadMessages(from int64, fn func(msg []byte) error) error {
	if !s.Messages() {
		return fmt.Errorf("snapshot of shape %s generation %d: chunk format version %d stores rows, not messages", s.Handle, s.Generation, s.Version)
	}
	first := int64(0) // index of the first row of chunk i
	for i, c := range s.Chunks {
		if from >= first+c.Rows {
			first += c.Rows
			continue
		}
		err := s.readChunkLines(i, func(n int64, line []byte) error {
			if first+n < from {
				return nil
			}
			if n > 0 {
				line = line[1:] // the comma before every row but a chunk's first
			}
			return fn(line)
		})
		if errors.Is(err, ErrStopRead) {
			return nil
		}
		if err != nil {
			return err
		}
		first += c.Rows
	}
	return nil
}

// readChunkLines calls fn with each stored line of chunk i (without its
// line end) and its index in the chunk, and checks the row count.
func (s *Snapshot) readChunkLines(i int, fn func(n int64, line []byte) error) error {
	f, err := s.openChunk(i)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxPayload)
	var n int64
	for sc.Scan() {
		line := sc.Bytes()
		if n > 0 && (len(line) == 0 || line[0] != ',') {
			return fmt.Errorf("snapshot of shape %s generation %d: chunk %d row %d does not start with a comma", s.Handle, s.Generation, i, n)
		}
		if err := fn(n, line); err != nil {
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

// RowsBefore is how many rows the chunks before chunk i hold: offsets of
// stored chunks (0_i, handed out before bases were cut by rows) name the
// row that follows them.
func (s *Snapshot) RowsBefore(i int) int64 {
	var n int64
	for _, c := range s.Chunks[:min(max(i, 0), len(s.Chunks))] {
		n += c.Rows
	}
	return n
}
