package shapeapi

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// copyBuffers are the buffers chunk files are copied through.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// streamSnapshotChunk answers with snapshot chunk i (offset 0_i), as
// serveSnapshotChunk does, for a snapshot whose chunks hold the encoded
// messages (shapelog version 2): the body is "[", the chunk file copied as
// it is, then "," and snapshot-end after the last chunk, and "]". Nothing
// is decoded, encoded or buffered, so every read of a chunk costs what a
// cached one does. Older snapshots, and the end of a snapshot without
// chunks, go through serveSnapshotChunk.
func (s *Server) streamSnapshotChunk(w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, i int) {
	if v.snap == nil || v.snap.snap == nil || !v.snap.snap.Messages() || i >= v.chunks() {
		s.serveSnapshotChunk(w, r, req, v, i)
		return
	}
	snap := v.snap.snap
	f, err := snap.OpenChunk(i)
	if err != nil {
		if snap.Replaced() {
			err = fmt.Errorf("%w: %v", errNotReady, err) // a new generation: the client comes back for it
		}
		s.fail(w, err)
		return
	}
	defer f.Close()
	last := Offset{Tx: 0, Op: uint64(i)}
	tail := []byte{']'}
	if i == len(snap.Chunks)-1 {
		end := SnapshotEnd(snap.Snapshot.Xmin, snap.Snapshot.Xmax, snap.Snapshot.Xip)
		tail = append(append(append(make([]byte, 0, len(end)+2), ','), end...), ']')
	}
	if !s.preamble(w, r, req, v, last, snapshotKind(req)) {
		return
	}
	h := w.Header()
	size := snap.Chunks[i].Bytes
	h.Set("content-type", "application/json")
	h.Set("content-length", strconv.FormatInt(1+size+int64(len(tail)), 10))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write([]byte{'['}); err != nil {
		return
	}
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	n, err := io.CopyBuffer(onlyWriter{w}, io.LimitReader(f, size), *buf)
	if err != nil || n != size {
		// The status is sent: cut the response short (its length says so).
		s.log.Error("snapshot chunk copy failed", "shape", v.shape.Handle, "chunk", i, "copied", n, "of", size, "err", err)
		return
	}
	w.Write(tail)
}

// onlyWriter hides everything but Write, so io.CopyBuffer uses the buffer.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }
