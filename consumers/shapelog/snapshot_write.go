package shapelog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fanout/pipeline/consumers/shapemsg"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// SnapshotWriter writes one generation of a shape's snapshot as chunk files,
// streaming: it holds one chunk's buffer, never the shape. Nothing it writes
// is visible to CurrentSnapshot until Complete.
type SnapshotWriter struct {
	s          Snapshot
	chunkRows  int64
	chunkBytes int64
	f          *os.File
	bw         *bufio.Writer
	cur        SnapshotChunk
	line       []byte
	enc        *shapemsg.SnapshotEncoder
	vals       []*string
}

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
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: create %s: %w (check storage.dir)", handle, gdir, err)
	}
	return newChunkWriter(gdir, handle, gen, table, columns, pk, chunkRows, chunkBytes)
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
		enc: enc, vals: make([]*string, len(columns)),
	}
	return w, nil
}

// Add appends a row (values of the writer's columns; a missing column is NULL).
func (w *SnapshotWriter) Add(row fanout.Row) error { return w.AddMeta(row, nil, nil) }

// AddMeta is Add for a shape with subqueries: the row's message carries its
// tags and active conditions (tags nil: a plain row).
func (w *SnapshotWriter) AddMeta(row fanout.Row, tags []string, active []bool) error {
	if w.f == nil {
		f, err := os.Create(filepath.Join(w.s.dir, chunkName(len(w.s.Chunks))))
		if err != nil {
			return fmt.Errorf("snapshot of shape %s: create chunk: %w", w.s.Handle, err)
		}
		w.f, w.bw, w.cur = f, bufio.NewWriterSize(f, 256<<10), SnapshotChunk{}
	}
	w.line = w.line[:0]
	if w.cur.Rows > 0 {
		w.line = append(w.line, ',')
	}
	for i, c := range w.s.Columns {
		w.vals[i] = row[c]
	}
	if tags != nil {
		w.line = w.enc.AppendMeta(w.line, w.vals, tags, active)
	} else {
		w.line = w.enc.Append(w.line, w.vals)
	}
	w.line = append(w.line, '\n')
	if _, err := w.bw.Write(w.line); err != nil {
		return fmt.Errorf("snapshot of shape %s: write chunk: %w", w.s.Handle, err)
	}
	w.cur.Rows++
	w.cur.Bytes += int64(len(w.line))
	w.s.Rows++
	w.s.Bytes += int64(len(w.line))
	if w.cur.Rows >= w.chunkRows || w.cur.Bytes >= w.chunkBytes {
		return w.closeChunk()
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

func (w *SnapshotWriter) closeChunk() error {
	if w.f == nil {
		return nil
	}
	err := w.bw.Flush()
	if err == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if err != nil {
		return fmt.Errorf("snapshot of shape %s: finish chunk %d: %w", w.s.Handle, len(w.s.Chunks), err)
	}
	w.s.Chunks = append(w.s.Chunks, w.cur)
	return nil
}

// Complete makes the generation durable and current: chunks synced, then the
// manifest written and renamed into place, then older generations removed.
func (w *SnapshotWriter) Complete(snap visibility.Snapshot) (*Snapshot, error) {
	if err := w.closeChunk(); err != nil {
		return nil, err
	}
	w.s.Snapshot = snap
	w.s.Completed = time.Now().UTC()
	data, err := json.Marshal(&w.s)
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(w.s.dir, manifestName+".tmp")
	if err := writeSynced(tmp, data); err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: write manifest: %w", w.s.Handle, err)
	}
	if err := syncDir(w.s.dir); err != nil { // the chunks' names
		return nil, fmt.Errorf("snapshot of shape %s: sync %s: %w", w.s.Handle, w.s.dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(w.s.dir, manifestName)); err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: publish manifest: %w", w.s.Handle, err)
	}
	if err := syncDir(w.s.dir); err != nil {
		return nil, fmt.Errorf("snapshot of shape %s: sync %s: %w", w.s.Handle, w.s.dir, err)
	}
	for _, d := range []string{filepath.Dir(w.s.dir), filepath.Dir(filepath.Dir(w.s.dir))} {
		if err := syncDir(d); err != nil {
			return nil, fmt.Errorf("snapshot of shape %s: sync %s: %w", w.s.Handle, d, err)
		}
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
	os.RemoveAll(w.s.dir)
}

func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
