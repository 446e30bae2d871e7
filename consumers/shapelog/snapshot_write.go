package shapelog

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
	"unsafe"

	"github.com/fanout/pipeline/consumers/shapemsg"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// SnapshotWriter writes one generation of a shape's snapshot as chunk files,
// streaming: it holds a write buffer, never the shape. Nothing it writes
// is visible to CurrentSnapshot until Complete. Finished chunks are fsynced
// in the background while the next ones are written; Complete and Abort
// wait for them.
type SnapshotWriter struct {
	s          Snapshot
	chunkRows  int64
	chunkBytes int64
	f          *os.File
	buf        []byte // encoded rows not yet written to f
	cur        SnapshotChunk
	enc        *shapemsg.SnapshotEncoder
	vals       [][]byte
	syncing    []chan error // fsyncs of finished chunks still running, oldest first
	newDirs    []string     // the directories NewSnapshotWriter created, the generation's last
}

// chunkSyncs is how many finished chunks a writer fsyncs at once: the disk
// takes several at a time, and the writer goes on meanwhile.
const chunkSyncs = 4

// snapshotWriteBuffer is how much a writer encodes before each write(2).
const snapshotWriteBuffer = 256 << 10

// NewSnapshotWriter starts generation gen of handle's snapshot of table
// (schema.table) with columns in that order, keyed by pk (each among
// columns). gen must be above every complete generation on disk (a
// generation number is never reused: readers tell generations apart by
// it). It removes every incomplete generation (a crashed runner's
// leftovers), gen's own included.
func NewSnapshotWriter(dir, handle string, gen uint64, table string, columns, pk []string, chunkRows, chunkBytes int) (*SnapshotWriter, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	if !shapemsg.NewSnapshotEncoder("", "", columns, pk).KeyColumns(pk) {
		return nil, fmt.Errorf("snapshot of shape %s: primary key %v is not among the columns %v", handle, pk, columns)
	}
	gens, err := snapshotGenerations(dir, handle)
	if err != nil {
		return nil, err
	}
	for _, g := range gens {
		gd := generationDir(dir, handle, g)
		_, err := os.Stat(filepath.Join(gd, manifestName))
		if err == nil && g >= gen {
			return nil, fmt.Errorf("snapshot of shape %s: generation %d is complete on disk, so generation %d cannot be written (generation numbers are never reused)", handle, g, gen)
		}
		if err != nil {
			if err := os.RemoveAll(gd); err != nil {
				return nil, fmt.Errorf("snapshot of shape %s: remove incomplete generation %d: %w", handle, g, err)
			}
		}
	}
	gdir := generationDir(dir, handle, gen)
	created, err := mkdirs(gdir)
	if err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: create %s: %w (check storage.dir)", handle, gdir, err)
	}
	w, err := newChunkWriter(gdir, handle, gen, table, columns, pk, chunkRows, chunkBytes)
	if err != nil {
		return nil, err
	}
	w.newDirs = created
	return w, nil
}

// newChunkWriter writes rows as chunk files into the folder gdir, which
// exists: a snapshot generation's, or a compacted generation's base
// (compact.go), which writes its own manifest.
func newChunkWriter(gdir, handle string, gen uint64, table string, columns, pk []string, chunkRows, chunkBytes int) (*SnapshotWriter, error) {
	schema, name := fanout.SplitTable(table)
	enc := shapemsg.NewSnapshotEncoder(schema, name, columns, pk)
	if !enc.KeyColumns(pk) {
		return nil, fmt.Errorf("rows of shape %s: primary key %v is not among the columns %v", handle, pk, columns)
	}
	w := &SnapshotWriter{
		s: Snapshot{Version: SnapshotVersion, Handle: handle, Generation: gen, Table: table, Columns: columns, PrimaryKey: pk,
			Chunks: []SnapshotChunk{}, dir: gdir},
		chunkRows: int64(max(chunkRows, 1)), chunkBytes: int64(max(chunkBytes, 1)),
		enc: enc, vals: make([][]byte, len(columns)),
	}
	return w, nil
}

// Add appends a row (values of the writer's columns; a missing column is NULL).
func (w *SnapshotWriter) Add(row fanout.Row) error { return w.AddMeta(row, nil, nil) }

// AddMeta is Add for a shape with subqueries: the row's message carries its
// tags and active conditions (tags nil: a plain row).
func (w *SnapshotWriter) AddMeta(row fanout.Row, tags []string, active []bool) error {
	for i, c := range w.s.Columns {
		w.vals[i] = nil
		if v := row[c]; v != nil {
			// Read only, by AddValuesMeta, before AddMeta returns.
			w.vals[i] = unsafe.Slice(unsafe.StringData(*v), len(*v))
			if w.vals[i] == nil {
				w.vals[i] = []byte{} // "" is not NULL
			}
		}
	}
	return w.AddValuesMeta(w.vals, tags, active)
}

// AddValues appends a row given as the values of the writer's columns, in
// order, in Postgres text format (nil: NULL). It keeps nothing of vals.
func (w *SnapshotWriter) AddValues(vals [][]byte) error { return w.AddValuesMeta(vals, nil, nil) }

// AddValuesMeta is AddValues for a shape with subqueries: the row's
// message carries its tags and active conditions (tags nil: a plain row).
func (w *SnapshotWriter) AddValuesMeta(vals [][]byte, tags []string, active []bool) error {
	if len(vals) != len(w.s.Columns) {
		return fmt.Errorf("snapshot of shape %s: a row of %d values for %d columns", w.s.Handle, len(vals), len(w.s.Columns))
	}
	if w.f == nil {
		f, err := os.Create(filepath.Join(w.s.dir, chunkName(len(w.s.Chunks))))
		if err != nil {
			return fmt.Errorf("snapshot of shape %s: create chunk: %w", w.s.Handle, err)
		}
		w.f, w.cur = f, SnapshotChunk{}
	}
	start := len(w.buf)
	if w.cur.Rows > 0 {
		w.buf = append(w.buf, ',')
	}
	if tags != nil {
		w.buf = w.enc.AppendMeta(w.buf, vals, tags, active)
	} else {
		w.buf = w.enc.Append(w.buf, vals)
	}
	w.buf = append(w.buf, '\n')
	n := int64(len(w.buf) - start)
	w.cur.Rows++
	w.cur.Bytes += n
	w.s.Rows++
	w.s.Bytes += n
	if len(w.buf) >= snapshotWriteBuffer {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if w.cur.Rows >= w.chunkRows || w.cur.Bytes >= w.chunkBytes {
		return w.closeChunk()
	}
	return nil
}

func (w *SnapshotWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.f.Write(w.buf)
	w.buf = w.buf[:0]
	if err != nil {
		return fmt.Errorf("snapshot of shape %s: write chunk %d: %w", w.s.Handle, len(w.s.Chunks), err)
	}
	return nil
}

// Progress is what the writer has written so far.
func (w *SnapshotWriter) Progress() (rows, bytes int64, chunks int) {
	n := len(w.s.Chunks)
	if w.f != nil {
		n++
	}
	return w.s.Rows, w.s.Bytes, n
}

// closeChunk writes out the current chunk and starts its fsync, once fewer
// than chunkSyncs are running.
func (w *SnapshotWriter) closeChunk() error {
	if w.f == nil {
		return nil
	}
	err := w.flush()
	for len(w.syncing) >= chunkSyncs {
		if serr := w.awaitSync(); err == nil {
			err = serr
		}
	}
	f, i := w.f, len(w.s.Chunks)
	w.f = nil
	if err != nil {
		f.Close()
		return err
	}
	w.inBackground(func() error {
		err := syncFile(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			err = fmt.Errorf("snapshot of shape %s: finish chunk %d: %w", w.s.Handle, i, err)
		}
		return err
	})
	w.s.Chunks = append(w.s.Chunks, w.cur)
	return nil
}

// inBackground runs an fsync on a goroutine of its own; awaitSync and
// awaitSyncs wait for it.
func (w *SnapshotWriter) inBackground(sync func() error) {
	done := make(chan error, 1)
	go func() { done <- sync() }()
	w.syncing = append(w.syncing, done)
}

// awaitSync waits for the oldest running fsync.
func (w *SnapshotWriter) awaitSync() error {
	if len(w.syncing) == 0 {
		return nil
	}
	err := <-w.syncing[0]
	w.syncing = w.syncing[1:]
	return err
}

// awaitSyncs waits for every running fsync and returns the first error.
func (w *SnapshotWriter) awaitSyncs() error {
	var first error
	for len(w.syncing) > 0 {
		if err := w.awaitSync(); first == nil {
			first = err
		}
	}
	return first
}

// finishChunks writes out the last chunk and waits until every chunk is
// durable.
func (w *SnapshotWriter) finishChunks() error {
	err := w.closeChunk()
	if serr := w.awaitSyncs(); err == nil {
		err = serr
	}
	return err
}

// Complete makes the generation durable and current: the chunks, the
// manifest (written as manifest.json.tmp) and the names of the new
// directories synced, all at once; then the generation's folder (the
// chunks' and the manifest's names); then the manifest renamed into place
// and the folder synced again; then older generations removed.
func (w *SnapshotWriter) Complete(snap visibility.Snapshot) (*Snapshot, error) {
	if err := w.closeChunk(); err != nil {
		return nil, err
	}
	w.s.Snapshot = snap
	w.s.Completed = time.Now().UTC()
	data, err := json.Marshal(&w.s)
	if err != nil {
		w.awaitSyncs()
		return nil, err
	}
	tmp := filepath.Join(w.s.dir, manifestName+".tmp")
	w.inBackground(func() error {
		if err := writeSynced(tmp, data); err != nil {
			return fmt.Errorf("snapshot of shape %s: write manifest: %w", w.s.Handle, err)
		}
		return nil
	})
	for _, d := range w.newDirs {
		w.inBackground(func() error {
			if err := syncDir(filepath.Dir(d)); err != nil {
				return fmt.Errorf("snapshot of shape %s: sync %s: %w", w.s.Handle, filepath.Dir(d), err)
			}
			return nil
		})
	}
	if err := w.awaitSyncs(); err != nil {
		return nil, err
	}
	if err := syncDir(w.s.dir); err != nil { // the chunks' and the manifest's names
		return nil, fmt.Errorf("snapshot of shape %s: sync %s: %w", w.s.Handle, w.s.dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(w.s.dir, manifestName)); err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: publish manifest: %w", w.s.Handle, err)
	}
	if err := syncDir(w.s.dir); err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: sync %s: %w", w.s.Handle, w.s.dir, err)
	}
	dir := filepath.Dir(filepath.Dir(filepath.Dir(filepath.Dir(w.s.dir)))) // <dir>/shapes/<h>/snapshot/g<N>
	gens, _ := snapshotGenerations(dir, w.s.Handle)
	for _, g := range gens {
		if g < w.s.Generation {
			os.RemoveAll(generationDir(dir, w.s.Handle, g)) // best effort: a newer one is current
		}
	}
	s := w.s
	return &s, nil
}

// Abort removes the generation's files.
func (w *SnapshotWriter) Abort() {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	w.awaitSyncs()
	os.RemoveAll(w.s.dir)
}

// mkdirs creates dir and its missing parents, and returns those it
// created, outermost first: their names must be synced in their parents.
func mkdirs(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	slices.Reverse(missing)
	for _, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return nil, err
		}
	}
	return missing, nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
