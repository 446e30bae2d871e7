package shapeapi

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// A read of a shape starts at a place decoded from the client's offset
// (locate): in the shape's base (its initial snapshot), or in its log. It
// is then planned (how far one response goes: its last offset, whether it
// reaches the end of what is readable) without keeping any message, and
// written: the same range is read again and its messages are streamed to
// the client. So a response costs memory in proportion to one message,
// whatever api.chunk_bytes is and however slowly the client reads, and the
// headers (electric-offset, electric-up-to-date, etag) are known before the
// body is written.
//
// What is readable is decided by the shape log: shapelog.ReadLog passes
// whole transactions only. Every read of a log goes through it, so no
// response, SSE batch or up-to-date message ends inside a transaction.

// place is where a read starts.
type place struct {
	inBase bool
	gen    uint64 // the generation of the base, or of the log read from its start
	row    int64  // in the base: the next row
	// fromGen: the log of generation gen from its start; else the log
	// after offset after, in the generation that holds it (generations.go).
	fromGen bool
	after   Offset // in the log: entries strictly after it
}

// locate decodes the request's offset into a place of v's shape, a 400
// for an offset this shape never handed out, or an *ExpiredError for one
// in a generation no longer served (generations.go).
func (v *shapeView) locate(req *Request) (place, error) {
	o := req.Offset
	changesOnly := req.Def.Log == "changes_only"
	if gen, rows, ok := o.baseRow(); ok {
		g, err := v.generation(gen)
		if err != nil {
			return place{}, err
		}
		if changesOnly {
			return v.logStartOf(gen), nil // no base: the generation's log from its start
		}
		if rows > g.BaseRows() {
			return place{}, Invalid("offset", "out of bounds for this shape")
		}
		return v.basePlace(g, rows), nil
	}
	switch {
	case o.Start && changesOnly:
		return v.logStartOf(v.chain.Current().Number), nil
	case o.Start:
		return place{inBase: true, gen: v.chain.Current().Number}, nil // its snapshot-end even when it has no rows
	case o.Tx > 0:
		return place{after: o}, nil
	case o.Op == InfOp, changesOnly:
		return v.logStartOf(0), nil
	}
	if o.Op < legacyChunks { // "0_i": after stored chunk i of the initial snapshot
		g, err := v.generation(0)
		if err != nil {
			return place{}, err
		}
		return v.basePlace(g, v.rowsThroughChunk(g, int(o.Op))), nil
	}
	return place{}, Invalid("offset", "out of bounds for this shape")
}

// basePlace is generation g's base after its first rows rows, or its
// log's start once the base is done.
func (v *shapeView) basePlace(g *shapelog.Generation, rows int64) place {
	if rows >= g.BaseRows() {
		return v.logStartOf(g.Number)
	}
	return place{inBase: true, gen: g.Number, row: rows}
}

func (v *shapeView) rowsThroughChunk(g *shapelog.Generation, i int) int64 {
	if g.Base == nil {
		return 0
	}
	return g.Base.RowsBefore(i + 1)
}

// eachBaseMessage calls fn with the message of each row of base from row
// on, until the last or ErrStopRead. Version 1 snapshots store rows: those
// are encoded here.
func (v *shapeView) eachBaseMessage(base *shapelog.Snapshot, row int64, fn func(msg []byte) error) error {
	if base.Messages() {
		return base.ReadMessages(row, fn)
	}
	headers := snapshotHeaders(v.rel)
	var msg []byte
	var n int64
	err := base.EachRow(func(r fanout.Row) error {
		n++
		if n <= row {
			return nil
		}
		msg = appendMessage(msg[:0], v.rel, r, headers)
		return fn(msg)
	})
	if errors.Is(err, shapelog.ErrStopRead) {
		return nil
	}
	return err
}

// serveBase answers with the base's rows from p.row, about
// api.chunk_bytes of them, then snapshot-end after the last. Never
// up-to-date: the log follows. The response ends at BaseOffset(gen, rows
// served so far).
func (s *Server) serveBase(w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, p place) {
	limit := s.cfg.API.ChunkBytes
	size, n := 1, int64(0)
	var end []byte
	g, err := v.generation(p.gen)
	if err != nil {
		s.expired(w, v.shape.Handle, err)
		return
	}
	base, total := g.Base, g.BaseRows()
	if total > 0 {
		err = v.eachBaseMessage(base, p.row, func(msg []byte) error {
			if n > 0 && size+1+len(msg)+1 > limit {
				return shapelog.ErrStopRead
			}
			size += len(msg) + 1
			n++
			return nil
		})
		if err != nil {
			s.fail(w, err)
			return
		}
	}
	rows := p.row + n
	if rows == total {
		// The initial snapshot's visibility, which a compacted base keeps:
		// readers of every generation's log skip what it saw.
		var xmin, xmax uint64
		var xip []uint64
		if base != nil {
			xmin, xmax, xip = base.Snapshot.Xmin, base.Snapshot.Xmax, base.Snapshot.Xip
		}
		end = SnapshotEnd(xmin, xmax, xip)
		size += len(end) + 1
	}
	if n == 0 && end == nil {
		s.fail(w, fmt.Errorf("base of shape %s: no row after row %d of %d", v.shape.Handle, p.row, total))
		return
	}
	last := BaseOffset(p.gen, rows)
	w.Header().Set("electric-has-data", strconv.FormatBool(n > 0))
	if !s.preamble(w, r, req, v, last, snapshotKind(req)) {
		return
	}
	h := w.Header()
	h.Set("content-type", "application/json")
	h.Set("content-length", strconv.Itoa(size))
	w.WriteHeader(http.StatusOK)
	bw, release := s.bodyWriter(w)
	defer release()
	bw.WriteByte('[')
	written := int64(0)
	if n > 0 {
		err = v.eachBaseMessage(base, p.row, func(msg []byte) error {
			if written == n {
				return shapelog.ErrStopRead
			}
			if written > 0 {
				bw.WriteByte(',')
			}
			written++
			_, err := bw.Write(msg)
			return err
		})
	}
	if err == nil && written != n {
		err = fmt.Errorf("the base changed while it was served (%d of %d rows)", written, n)
	}
	if err != nil {
		// The status is sent: cut the response short (its length says so).
		s.log.Error("serving a shape's base failed", "shape", v.shape.Handle, "row", p.row, "err", err)
		return
	}
	if end != nil {
		if n > 0 {
			bw.WriteByte(',')
		}
		bw.Write(end)
	}
	bw.WriteByte(']')
	bw.Flush()
}

// bodyBuffer is how much of a streamed body is held before any of it (and
// so the headers) reaches the client: a response up to this size goes out
// in one piece, as it would if built whole. Electric's 1.0 client (the one
// pglite-sync uses) aborts requests to refresh and cannot survive an abort
// between the headers and the end of the body (its long poll reads the
// body outside its retry wrapper: the stream dies), so that gap is kept
// as short as the network makes it for all but the largest responses.
const bodyBuffer = 256 << 10

var bodyWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bodyBuffer) }}

// bodyWriter buffers a streamed body on its way to the client; release
// returns it (after the last Flush).
func (s *Server) bodyWriter(w io.Writer) (bw *bufio.Writer, release func()) {
	bw = bodyWriters.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw, func() {
		bw.Reset(nil)
		bodyWriters.Put(bw)
	}
}

// logPlan is how far one response of a log read goes.
type logPlan struct {
	after Offset
	start shapelog.Cursor // where the write pass reads from
	// n fragments are served, the last one (at lastPos) up to lastOff:
	// whole, or cut inside when it alone would overflow the response.
	n       int
	lastPos fanout.Position
	lastOff Offset
	// atEnd: the read reached the log's readable end (end); truncated: a
	// truncate follows (the shape is rotated).
	atEnd, truncated bool
	end              shapelog.Cursor
	// recent holds the whole body when the index's recent entries
	// answered (recentLast is then its last offset).
	recent     *Chunk
	recentLast Offset
}

// lastOffset is the response's electric-offset.
func (p *logPlan) lastOffset() Offset {
	switch {
	case p.recent != nil:
		return p.recentLast
	case p.n > 0:
		return p.lastOff
	}
	return p.after
}

func (p *logPlan) empty() bool { return p.n == 0 && (p.recent == nil || p.recent.Len() == 0) }

// lastCommit is the commit LSN of the log's last readable transaction (0: none).
func (p *logPlan) lastCommit() pglogrepl.LSN {
	if last, ok := p.end.Last(); ok {
		return last.CommitLSN
	}
	return 0
}

// messageOverhead estimates what a change's message adds to its share of
// a fragment's bytes (key, headers): plans cut responses by it.
const messageOverhead = 200

// planLog plans a read of handle's log from at (not in a base), through
// the newer generations' logs.
func (s *Server) planLog(handle string, v *shapeView, at place) (*logPlan, error) {
	if err := s.stale(v.shape); err != nil { // continuity.go: never up to date while stale
		return nil, err
	}
	p, err := s.planLogOnce(handle, v, at)
	if err == nil && p.atEnd && v.chain.Stale() {
		// A newer generation completed after the chain was loaded: the
		// writer appends to its log now, so the end read is not the end.
		if v.chain, err = s.chainOf(handle, true); err != nil {
			return nil, err
		}
		p, err = s.planLogOnce(handle, v, at)
	}
	return p, err
}

func (s *Server) planLogOnce(handle string, v *shapeView, at place) (*logPlan, error) {
	if v.chain == nil {
		var err error
		if v.chain, err = s.chainOf(handle, false); err != nil {
			return nil, err
		}
	}
	g, err := v.startGeneration(at)
	if err != nil {
		return nil, err
	}
	after := at.after
	ix := s.index(handle)
	seen := v.seen()
	end, err := ix.extend(v.chain, v.rel, seen)
	if err != nil {
		return nil, err
	}
	p := &logPlan{after: after, end: end}
	defer func() {
		if c := p.lastCommit(); c > 0 {
			s.marks.saw(c)
		}
	}()
	c := NewChunk(s.cfg.API.ChunkBytes, after)
	if ok, atEnd, truncated := ix.fromRecent(after, c); ok {
		p.recent, p.recentLast, p.atEnd, p.truncated = c, c.Last(), atEnd, truncated
		return p, nil
	}
	p.start = ix.seekIn(g, after)
	limit := s.cfg.API.ChunkBytes
	size, full := 1, false
	readEnd, err := v.chain.Read(p.start, func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		if !LastOp(e.Position).After(after) {
			return nil
		}
		if xid, _ := e.Xid(); seen != nil && seen(&fanout.Fragment{Xid: xid}) {
			return nil
		}
		var f *fanout.Fragment
		changes := e.Changes
		if e.MayTruncate || changes < 0 {
			var err error
			if f, err = e.Fragment(); err != nil {
				return err
			}
			if f.HasTruncate() {
				p.truncated = true
				return shapelog.ErrStopRead
			}
			changes = len(f.Changes)
		}
		// Whole fragments go by an estimate of their messages' size; the
		// one that would overflow the response is encoded and cut at a
		// message (a response is about api.chunk_bytes, and always
		// carries at least one message).
		if est := e.Size() + messageOverhead*changes; size+est <= limit {
			size += est
			p.n, p.lastPos, p.lastOff = p.n+1, e.Position, LastOp(e.Position)
			return nil
		}
		if f == nil {
			var err error
			if f, err = e.Fragment(); err != nil {
				return err
			}
		}
		entries, _ := EncodeFragment(v.rel, f)
		for _, en := range entries {
			if !en.Offset.After(after) {
				continue
			}
			if size > 1 && size+len(en.JSON)+1 > limit {
				full = true
				return shapelog.ErrStopRead
			}
			if p.lastPos != e.Position || p.n == 0 {
				p.n++
			}
			size += len(en.JSON) + 1
			p.lastPos, p.lastOff = e.Position, en.Offset
		}
		if p.lastPos == e.Position {
			p.lastOff = LastOp(e.Position) // all of it fit
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.atEnd = !full && !p.truncated
	if p.atEnd {
		p.end = readEnd // the log may have grown since the index read it
	}
	return p, nil
}

// eachLogMessage calls fn with every message of plan p, in order.
func (s *Server) eachLogMessage(handle string, v *shapeView, p *logPlan, fn func(msg []byte) error) error {
	if p.recent != nil {
		return p.recent.each(fn)
	}
	if p.n == 0 {
		return nil
	}
	seen := v.seen()
	written := 0
	_, err := v.chain.Read(p.start, func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		if !LastOp(e.Position).After(p.after) {
			return nil
		}
		if e.Position.After(p.lastPos) {
			return shapelog.ErrStopRead
		}
		if xid, _ := e.Xid(); seen != nil && seen(&fanout.Fragment{Xid: xid}) {
			return nil
		}
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		entries, _ := EncodeFragment(v.rel, f)
		for _, en := range entries {
			if !en.Offset.After(p.after) || en.Offset.After(p.lastOff) {
				continue
			}
			if err := fn(en.JSON); err != nil {
				return err
			}
		}
		written++
		return nil
	})
	if errors.Is(err, shapelog.ErrStopRead) {
		err = nil
	}
	if err == nil && written != p.n {
		err = fmt.Errorf("log of shape %s changed while it was served (%d of %d fragments)", handle, written, p.n)
	}
	return err
}
