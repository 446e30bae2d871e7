package shapeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
)

const exposeHeaders = "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,retry-after"

// sseMaxDuration is how long one SSE response stays open (Electric: about 60 s).
const sseMaxDuration = 60 * time.Second

// Handler is the HTTP API. ctx ends held requests at shutdown.
func (s *Server) Handler(ctx context.Context) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/health", func(w http.ResponseWriter, r *http.Request) {
		s.cors(w, r)
		if !s.ready.Load() {
			writeJSON(w, http.StatusServiceUnavailable, []byte(`{"status":"starting"}`))
			return
		}
		writeJSON(w, http.StatusOK, []byte(`{"status":"active"}`))
	})
	mux.HandleFunc("/v1/shape", func(w http.ResponseWriter, r *http.Request) {
		s.cors(w, r)
		rec := &statusRecorder{ResponseWriter: w, code: 200}
		defer func() { s.requests.WithLabelValues(strconv.Itoa(rec.code)).Inc() }()
		w = rec
		if r.Method == http.MethodOptions {
			w.Header().Set("access-control-allow-methods", "GET, POST, DELETE, OPTIONS")
			w.Header().Set("access-control-allow-headers", "*")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !s.authorized(r) {
			w.Header().Set("cache-control", "no-store")
			writeJSON(w, http.StatusUnauthorized, errorBody("Unauthorized: the secret parameter is missing or wrong"))
			return
		}
		if !s.ready.Load() {
			s.unavailable(w, errors.New("the shape API is starting"))
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodPost: // POST: a subset snapshot, its fields in the body
			s.serveShape(ctx, w, r)
		case http.MethodDelete:
			s.deleteShape(w, r)
		default:
			w.Header().Set("cache-control", "no-store")
			writeJSON(w, http.StatusMethodNotAllowed, errorBody("method not allowed: use GET, POST, DELETE or OPTIONS"))
		}
	})
	return mux
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) { r.code = code; r.ResponseWriter.WriteHeader(code) }
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		origin = "*"
	}
	w.Header().Set("access-control-allow-origin", origin)
	w.Header().Set("access-control-expose-headers", exposeHeaders)
}

func (s *Server) badRequest(w http.ResponseWriter, bad *BadRequest) {
	w.Header().Set("cache-control", "no-store")
	writeJSON(w, http.StatusBadRequest, bad.Body())
}

// unavailable is a 503 whose cause goes to the log, not to the client.
func (s *Server) unavailable(w http.ResponseWriter, err error) {
	s.log.Warn("shape request not served yet", "err", err)
	w.Header().Set("cache-control", "no-store")
	w.Header().Set("retry-after", "1")
	writeJSON(w, http.StatusServiceUnavailable, notReadyBody)
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	var bad *BadRequest
	var over *overloaded
	switch {
	case errors.As(err, &bad):
		s.badRequest(w, bad)
	case errors.As(err, &over):
		s.refuse(w, over)
	case errors.Is(err, errNotReady):
		s.unavailable(w, err)
	default:
		s.log.Error("shape request failed", "err", err)
		w.Header().Set("cache-control", "no-store")
		writeJSON(w, http.StatusInternalServerError, internalErrorBody)
	}
}

func (s *Server) refetch(w http.ResponseWriter, handle string) {
	w.Header().Set("electric-handle", handle)
	w.Header().Set("cache-control", CacheControl(KindRefetch, 0, 0))
	writeJSON(w, http.StatusConflict, []byte(MustRefetch))
}

// shapeView is what one response needs of its shape.
type shapeView struct {
	shape  *fanout.Shape
	rel    Relation
	snap   *snapshotView
	schema string
}

// view is what a response for handle, which serves def, needs.
func (s *Server) view(ctx context.Context, handle string, def Definition) (*shapeView, error) {
	sh := s.shapes.get(ctx, handle)
	if sh == nil {
		return nil, fmt.Errorf("%w: shape %s was removed", errNotReady, handle)
	}
	snap, err := s.awaitReady(ctx, handle)
	if err != nil {
		return nil, err
	}
	cols, err := s.columnInfo(ctx, sh)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotReady, err)
	}
	rel := NewRelation(sh)
	rel.Full = def.Replica == "full"
	return &shapeView{shape: sh, rel: rel, snap: snap, schema: SchemaHeader(cols, sh.Columns, sh.PrimaryKey)}, nil
}

func (s *Server) serveShape(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	req, bad := parseShapeRequest(r)
	if bad != nil {
		s.badRequest(w, bad)
		return
	}
	if r.Method == http.MethodPost && req.Subset == nil {
		s.badRequest(w, Invalid("subset", "POST /v1/shape is a subset snapshot request: its body holds the subset"))
		return
	}
	release, ok := s.admitRequest(w, req) // admission.go: live and subset requests
	if !ok {
		return
	}
	defer release()
	rctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(ctx, cancel) // shutdown ends held requests
	defer stop()
	handle, err := s.resolve(rctx, req.Def)
	if err != nil {
		s.fail(w, err)
		return
	}
	defer s.life.reading(handle)() // lifecycle.go: a shape being read is not idle
	if !req.Offset.Start && (req.Handle != handle && (!req.Now || req.Handle != "")) {
		s.refetch(w, handle)
		return
	}
	v, err := s.view(rctx, handle, req.Def)
	if err != nil {
		s.fail(w, err)
		return
	}
	h := w.Header()
	h.Set("electric-handle", handle)
	if req.Subset != nil {
		s.serveSubset(rctx, w, req, v)
		return
	}

	// The initial snapshot: chunk i ends at 0_i.
	if n := v.chunks(); !req.Now && req.Def.Log == "full" && (req.Offset.Start || (req.Offset.Tx == 0 && req.Offset.Op+1 < uint64(n))) {
		next := 0
		if !req.Offset.Start {
			next = int(req.Offset.Op) + 1
		}
		s.streamSnapshotChunk(w, r, req, v, next)
		return
	}
	if req.Offset.Start || req.Now {
		// changes_only, or now: start at the current end of the log.
		end, err := s.index(handle).extend(s.cfg.Storage.Dir, handle, v.rel, v.seen())
		if err != nil {
			s.fail(w, err)
			return
		}
		off := Offset{}
		last, ok := end.Last()
		if ok {
			off = LastOp(last)
		}
		c := NewChunk(s.cfg.API.ChunkBytes, off)
		if req.Now {
			c.Control(UpToDate(watermark(last, ok, s.safe.Load())))
			h.Set("electric-up-to-date", "")
		}
		s.finish(w, r, req, v, c.Last(), c.Bytes(), KindCatchUp)
		return
	}
	if req.SSE {
		s.serveSSE(rctx, w, req, v)
		return
	}
	var wake <-chan struct{}
	if req.Live {
		ch, unregister := s.hub.register(handle)
		defer unregister()
		wake = ch
	}
	var deadline <-chan time.Time
	if req.Live {
		t := time.NewTimer(s.cfg.API.LongPollTimeout)
		defer t.Stop()
		deadline = t.C
	}
	for {
		safe := s.safe.Load() // before the read: a true watermark
		c, atEnd, truncated, end, err := s.readLog(handle, v, req.Offset)
		if err != nil {
			s.fail(w, err)
			return
		}
		if truncated {
			s.rotate(rctx, w, req, handle)
			return
		}
		if atEnd && (c.Len() > 0 || !req.Live) {
			last, ok := end.Last()
			c.Control(UpToDate(watermark(last, ok, safe)))
			h.Set("electric-up-to-date", "")
		}
		if c.Len() > 0 {
			kind := KindCatchUp
			if req.Live {
				kind = KindLive
			}
			s.finish(w, r, req, v, c.Last(), c.Bytes(), kind)
			return
		}
		select {
		case <-wake:
			if !s.shapes.exists(rctx, handle) {
				s.rotate(rctx, w, req, handle)
				return
			}
		case <-deadline:
			last, ok := end.Last()
			c.Control(UpToDate(watermark(last, ok, s.safe.Load())))
			h.Set("electric-up-to-date", "")
			s.finish(w, r, req, v, c.Last(), c.Bytes(), KindLive)
			return
		case <-rctx.Done():
			if ctx.Err() != nil { // shutdown: answer so the client comes back elsewhere
				c.Control(UpToDate(watermark(fanout.Position{}, false, safe)))
				h.Set("electric-up-to-date", "")
				s.finish(w, r, req, v, c.Last(), c.Bytes(), KindLive)
			}
			return
		}
	}
}

// rotate answers 409 with the definition's new handle: its shape was
// removed, or the log holds a truncate (the shape is removed and made
// again, as Electric does, so clients refetch).
func (s *Server) rotate(ctx context.Context, w http.ResponseWriter, req *Request, old string) {
	if s.shapes.exists(ctx, old) {
		if err := shapes.Remove(ctx, s.bus, old, shapes.WithRemoveLog(s.log)); err != nil && !errors.Is(err, shapes.ErrUnknownShape) {
			s.fail(w, err)
			return
		}
		s.shapes.remove(old)
	}
	handle, err := s.resolve(ctx, req.Def)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.refetch(w, handle)
}

// seen says which logged transactions the snapshot already holds (nil: none).
func (v *shapeView) seen() func(*fanout.Fragment) bool {
	if v.snap == nil || v.snap.snap == nil {
		return nil
	}
	return v.snap.snap.Seen
}

func (v *shapeView) chunks() int {
	if v.snap == nil || v.snap.snap == nil {
		return 0
	}
	return len(v.snap.snap.Chunks)
}

// snapshotKind is the cache kind of a snapshot chunk response.
func snapshotKind(req *Request) Kind {
	if req.Offset.Start {
		return KindInitial
	}
	return KindCatchUp
}

// serveSnapshotChunk answers with snapshot chunk i (offset 0_i) of a
// snapshot whose chunks hold rows (shapelog version 1), or with the end of
// a snapshot without chunks; the last chunk ends with snapshot-end. Never
// up-to-date: the log follows. streamSnapshotChunk serves the others.
func (s *Server) serveSnapshotChunk(w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, i int) {
	kind := snapshotKind(req)
	last := Offset{Tx: 0, Op: uint64(i)}
	var key string
	if v.snap != nil && v.snap.snap != nil {
		key = fmt.Sprintf("%s/%d/%d", v.shape.Handle, v.snap.snap.Generation, i)
		if body := s.chunkCache.get(key); body != nil {
			s.finish(w, r, req, v, last, body, kind)
			return
		}
	}
	c := NewChunk(1<<62, last)
	if i < v.chunks() {
		headers := snapshotHeaders(v.rel)
		var msg []byte
		err := v.snap.snap.ReadChunk(i, func(row fanout.Row) error {
			msg = appendMessage(msg[:0], v.rel, row, headers)
			c.Control(msg)
			return nil
		})
		if err != nil {
			s.fail(w, err)
			return
		}
	}
	if i >= v.chunks()-1 {
		var xmin, xmax uint64
		var xip []uint64
		if v.snap != nil && v.snap.snap != nil {
			xmin, xmax, xip = v.snap.snap.Snapshot.Xmin, v.snap.snap.Snapshot.Xmax, v.snap.snap.Snapshot.Xip
		}
		c.Control(SnapshotEnd(xmin, xmax, xip))
	}
	body := c.Bytes()
	if key != "" {
		s.chunkCache.put(key, body)
	}
	s.finish(w, r, req, v, last, body, kind)
}

// readLog reads the log after from into one chunk, skipping transactions the
// snapshot already holds. atEnd: the read reached the log's current end;
// truncated: the log holds a truncate after from.
func (s *Server) readLog(handle string, v *shapeView, from Offset) (c *Chunk, atEnd, truncated bool, end shapelog.Cursor, err error) {
	ix := s.index(handle)
	seen := v.seen()
	if end, err = ix.extend(s.cfg.Storage.Dir, handle, v.rel, seen); err != nil {
		return nil, false, false, end, err
	}
	c = NewChunk(s.cfg.API.ChunkBytes, from)
	if ok, atEnd, truncated := ix.fromRecent(from, c); ok {
		return c, atEnd, truncated, end, nil
	}
	full := false
	var decodeErr error
	end, err = shapelog.ReadLog(s.cfg.Storage.Dir, handle, ix.seek(from), func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		if !LastOp(e.Position).After(from) {
			return nil
		}
		f, err := e.Fragment()
		if err != nil {
			decodeErr = err
			return shapelog.ErrStopRead
		}
		if seen != nil && seen(f) {
			return nil
		}
		entries, trunc := EncodeFragment(v.rel, f)
		for _, en := range entries {
			if !en.Offset.After(from) {
				continue
			}
			if !c.Add(en) {
				full = true
				return shapelog.ErrStopRead
			}
		}
		if trunc {
			truncated = true
			return shapelog.ErrStopRead
		}
		return nil
	})
	if decodeErr != nil {
		err = decodeErr
	}
	return c, !full && !truncated, truncated, end, err
}

// finish writes a 200 (or 304) with the protocol's headers.
func (s *Server) finish(w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, last Offset, body []byte, kind Kind) {
	if s.preamble(w, r, req, v, last, kind) {
		writeJSON(w, http.StatusOK, body)
	}
}

// preamble sets the protocol headers of a 200 ending at last (offset,
// schema or cursor, cache-control, etag) and, when the request's
// If-None-Match is that etag, answers 304 and returns false: then nothing
// more may be written.
func (s *Server) preamble(w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, last Offset, kind Kind) bool {
	h := w.Header()
	h.Set("electric-offset", last.String())
	if kind == KindLive {
		h.Set("electric-cursor", NextCursor(time.Now(), req.Cursor))
	} else {
		h.Set("electric-schema", v.schema)
	}
	h.Set("cache-control", CacheControl(kind, s.cfg.API.MaxAge, s.cfg.API.StaleAge))
	etag := ETag(h.Get("electric-handle"), req.Offset, last)
	h.Set("etag", etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return false
	}
	return true
}

// serveSSE streams the log as server-sent events: each message one data
// event, an up-to-date after each batch that reaches the end, keep-alive
// comments, closed after about a minute (the client reconnects).
func (s *Server) serveSSE(ctx context.Context, w http.ResponseWriter, req *Request, v *shapeView) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		s.fail(w, errors.New("this connection cannot stream server-sent events"))
		return
	}
	handle := v.shape.Handle
	wake, unregister := s.hub.register(handle)
	defer unregister()
	h := w.Header()
	h.Set("content-type", "text/event-stream")
	h.Set("cache-control", CacheControl(KindSSE, 0, 0))
	h.Set("electric-offset", req.Offset.String())
	h.Set("electric-cursor", NextCursor(time.Now(), req.Cursor))
	h.Set("x-accel-buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	keepAlive := min(20*time.Second, s.cfg.API.LongPollTimeout)
	ka := time.NewTicker(keepAlive)
	defer ka.Stop()
	closeAt := time.NewTimer(sseMaxDuration)
	defer closeAt.Stop()
	from := req.Offset
	for first := true; ; first = false {
		safe := s.safe.Load()
		c, atEnd, truncated, end, err := s.readLog(handle, v, from)
		if err != nil || truncated {
			// The client reconnects and gets the 409 or the error then.
			if err != nil {
				s.log.Error("SSE read failed", "shape", handle, "err", err)
			}
			return
		}
		body := c.Bytes()
		if c.Len() > 0 {
			// Split the chunk's array into events: the entries are the
			// messages between the brackets.
			if err := writeEvents(w, body); err != nil {
				return
			}
			from = c.Last()
		}
		if atEnd && (c.Len() > 0 || first) {
			last, ok := end.Last()
			if _, err := fmt.Fprintf(w, "data: %s\n\n", UpToDate(watermark(last, ok, safe))); err != nil {
				return
			}
		}
		flusher.Flush()
		if !atEnd {
			continue
		}
		for waiting := true; waiting; {
			select {
			case <-wake:
				waiting = false
				if !s.shapes.exists(ctx, handle) {
					return
				}
			case <-ka.C:
				if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
					return
				}
				flusher.Flush()
			case <-closeAt.C:
				return
			case <-ctx.Done():
				return
			}
		}
	}
}
