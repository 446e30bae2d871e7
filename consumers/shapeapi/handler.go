package shapeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"

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
		w.Header().Set("cache-control", "no-store")
		status, ok := s.health()
		code := http.StatusOK
		if !ok {
			code = http.StatusAccepted // Electric's "not yet": clients and test suites wait for active
		}
		writeJSON(w, code, []byte(`{"status":"`+status+`"}`))
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		s.cors(w, r)
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/v1/shape", func(w http.ResponseWriter, r *http.Request) {
		s.cors(w, r)
		rec := &statusRecorder{ResponseWriter: w, code: 200}
		defer func() { s.requests.WithLabelValues(strconv.Itoa(rec.code)).Inc() }()
		w = rec
		if r.Method == http.MethodOptions {
			w.Header().Set("access-control-allow-methods", "GET, HEAD, POST, DELETE, OPTIONS")
			w.Header().Set("access-control-allow-headers", "*")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !s.authorized(r) {
			w.Header().Set("cache-control", "no-store")
			writeJSON(w, http.StatusUnauthorized, errorBody("Unauthorized: the secret parameter is missing or wrong"))
			return
		}
		if status, ok := s.serving(); !ok {
			s.unavailable(w, fmt.Errorf("the shape API is %s", status))
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodPost: // HEAD: as GET, net/http drops the body; POST: a subset snapshot, its fields in the body
			s.serveShape(ctx, w, r)
		case http.MethodDelete:
			s.deleteShape(w, r)
		default:
			w.Header().Set("cache-control", "no-store")
			writeJSON(w, http.StatusMethodNotAllowed, errorBody("method not allowed: use GET, HEAD, POST, DELETE or OPTIONS"))
		}
	})
	return serverHeader(mux)
}

// serverName is the electric-server header of every response.
const serverName = "fanout-shapeapi/1"

func serverHeader(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("electric-server", serverName)
		h.ServeHTTP(w, r)
	})
}

// health is the service's state as /v1/health says it: "active" (ok)
// once it serves, "starting" until it knows the shapes, "waiting" while it
// cannot reach NATS or cannot serve current data (replication continuity
// broken, shapes resyncing: continuity.go).
func (s *Server) health() (status string, ok bool) {
	if status, ok := s.serving(); !ok {
		return status, false
	}
	if current, _ := s.currentData(); !current {
		return "waiting", false
	}
	return "active", true
}

// serving is whether shape requests can be answered at all: a break of
// continuity only stops the shapes of the tables it affects (stale).
func (s *Server) serving() (status string, ok bool) {
	switch {
	case !s.ready.Load():
		return "starting", false
	case !s.nc.IsConnected():
		return "waiting", false
	}
	return "active", true
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
	if stale := (*staleShape)(nil); errors.As(err, &stale) {
		writeJSON(w, http.StatusServiceUnavailable, stale.body())
		return
	}
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
	// chain is the shape's generations (generations.go): its current
	// base, and where each offset is read.
	chain *shapelog.Chain
}

// view is what a response for handle, which serves def, needs.
func (s *Server) view(ctx context.Context, handle string, def Definition) (*shapeView, error) {
	sh := s.shapes.get(ctx, handle)
	if sh == nil {
		return nil, fmt.Errorf("%w: shape %s was removed", errNotReady, handle)
	}
	if err := s.stale(sh); err != nil { // continuity.go
		return nil, err
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
	chain, err := s.chainOf(handle, false)
	if err == nil && !sameSnapshot(chain, snap) {
		chain, err = s.chainOf(handle, true) // the cached one predates the snapshot
	}
	if err != nil {
		return nil, err
	}
	if !sameSnapshot(chain, snap) {
		return nil, fmt.Errorf("%w: shape %s: its snapshot changed while it was read", errNotReady, handle)
	}
	return &shapeView{shape: sh, rel: rel, snap: snap, schema: SchemaHeader(cols, sh.Columns, sh.PrimaryKey), chain: chain}, nil
}

// sameSnapshot says whether chain is built on the snapshot snap serves.
func sameSnapshot(chain *shapelog.Chain, snap *snapshotView) bool {
	if snap == nil || snap.snap == nil {
		return chain.Snapshot == nil
	}
	return chain.Snapshot != nil && chain.Snapshot.Generation == snap.snap.Generation
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
	w.Header().Set("electric-handle", handle)
	if req.Subset != nil {
		s.serveSubset(rctx, w, req, v)
		return
	}
	if req.Now {
		s.serveNow(rctx, w, r, req, v)
		return
	}
	if req.Offset.Start && req.Def.Log == "changes_only" {
		s.serveChangesOnlyStart(w, r, req, v)
		return
	}
	at, err := v.locate(req)
	if isExpired(err) {
		s.expired(w, handle, err)
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	if at.inBase {
		s.serveBase(w, r, req, v, at)
		return
	}
	if req.SSE {
		s.serveSSE(rctx, w, req, v, at)
		return
	}
	s.serveLog(ctx, rctx, w, r, req, v, at)
}

// serveNow answers offset=now: no messages but an up-to-date, at the
// current end of the log ("0_inf" while the log has no entry).
func (s *Server) serveNow(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, v *shapeView) {
	floor := s.marks.floor(ctx, v.shape.Handle) // before the read: a true watermark
	p, err := s.planLog(v.shape.Handle, v, v.logStartOf(v.chain.Current().Number))
	if err != nil {
		s.fail(w, err)
		return
	}
	off := Offset{Op: InfOp}
	if last, ok := p.end.Last(); ok {
		off = LastOp(last)
	}
	c := NewChunk(s.cfg.API.ChunkBytes, off)
	c.Control(UpToDate(s.marks.forHeldLog(p.lastCommit(), p.held, floor)))
	h := w.Header()
	h.Set("electric-up-to-date", "")
	h.Set("electric-has-data", "false")
	s.finish(w, r, req, v, off, c.Bytes(), KindCatchUp)
}

// serveChangesOnlyStart answers offset=-1 of a log=changes_only shape: the
// snapshot-end of the snapshot the change log starts after, and no rows;
// never up-to-date. The client goes on from "0_inf", the log's start, or
// once the shape is compacted, the start of its current generation's log.
func (s *Server) serveChangesOnlyStart(w http.ResponseWriter, r *http.Request, req *Request, v *shapeView) {
	start := Offset{Op: InfOp}
	if cur := v.chain.Current(); cur.Number > 0 {
		start = BaseOffset(cur.Number, cur.BaseRows()) // the log after the current generation's base
	}
	c := NewChunk(s.cfg.API.ChunkBytes, start)
	var xmin, xmax uint64
	var xip []uint64
	if v.snap != nil && v.snap.snap != nil {
		xmin, xmax, xip = v.snap.snap.Snapshot.Xmin, v.snap.snap.Snapshot.Xmax, v.snap.snap.Snapshot.Xip
	}
	c.Control(SnapshotEnd(xmin, xmax, xip))
	w.Header().Set("electric-has-data", "false")
	s.finish(w, r, req, v, c.Last(), c.Bytes(), KindInitial)
}

// serveLog answers a read of the log after from: at once when there is
// data (or the request is not live), else when data arrives or the long
// poll times out. An offset past anything this shape handed out is held
// like a live request for half the long-poll timeout, then refused.
func (s *Server) serveLog(shutdown, ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, at place) {
	from := at.after
	handle := v.shape.Handle
	var wake <-chan struct{}
	ch, unregister := s.hub.register(handle)
	defer unregister()
	wake = ch
	hold := time.Duration(0)
	if req.Live {
		hold = s.cfg.API.LongPollTimeout
	}
	deadline := time.NewTimer(max(hold, s.cfg.API.LongPollTimeout/2))
	defer deadline.Stop()
	target, waitUntil := s.marks.served.Load(), time.Now().Add(markWait) // a non-live read's wait (watermark.go)
	for {
		safe := s.marks.floor(ctx, handle) // before the read: a true watermark
		p, err := s.planLog(handle, v, at)
		if isExpired(err) {
			s.expired(w, handle, err)
			return
		}
		if err != nil {
			s.fail(w, err)
			return
		}
		if p.truncated {
			s.rotate(ctx, w, req, handle)
			return
		}
		beyond := p.empty() && p.atEnd && s.pastEnd(ctx, handle, p, from)
		if !p.empty() || (!req.Live && !beyond) {
			// Only a non-live read with nothing new waits until its
			// watermark reaches target, the newest commit this server had
			// served when the read began: that is the refresh pglite-sync
			// makes of its other shapes. A read with data answers at once:
			// a client's prefetch (Electric's 1.0 client aborts those, and
			// cannot survive an abort that comes while they are held). A log
			// holding records back caps its watermark below them: waiting
			// cannot raise it.
			if !req.Live && p.empty() && p.atEnd && p.held == 0 && uint64(s.marks.forLog(p.lastCommit(), safe)) < target && time.Now().Before(waitUntil) {
				if !sleep(ctx, markTTL) {
					return
				}
				continue
			}
			s.writeLogResponse(ctx, w, r, req, v, p, safe)
			return
		}
		select {
		case <-wake:
			if !s.shapes.exists(ctx, handle) {
				s.rotate(ctx, w, req, handle)
				return
			}
		case <-deadline.C:
			if beyond {
				s.badRequest(w, Invalid("offset", "out of bounds for this shape"))
				return
			}
			s.writeLogResponse(ctx, w, r, req, v, p, safe)
			return
		case <-ctx.Done():
			if shutdown.Err() != nil && req.Live { // shutdown: answer so the client comes back elsewhere
				s.writeLogResponse(context.WithoutCancel(ctx), w, r, req, v, p, safe)
			}
			return
		}
	}
}

// pastEnd reports whether from lies after the end of handle's log and
// after every watermark it could have been handed (the 1.5 client resumes
// from "<global_last_seen_lsn>_0" after an SSE batch).
func (s *Server) pastEnd(ctx context.Context, handle string, p *logPlan, from Offset) bool {
	last, ok := p.end.Last()
	if ok && !from.After(LastOp(last)) || from.Tx == 0 {
		return false
	}
	// Not a watermark handed out: the newest floor may be read after the log.
	return from.Tx > uint64(s.marks.forLog(p.lastCommit(), s.marks.floor(ctx, handle)))
}

// writeLogResponse writes the 200 of plan p: its messages, then an
// up-to-date when it reached the end of the log.
func (s *Server) writeLogResponse(ctx context.Context, w http.ResponseWriter, r *http.Request, req *Request, v *shapeView, p *logPlan, safe pglogrepl.LSN) {
	h := w.Header()
	var upToDate []byte
	if p.atEnd {
		upToDate = UpToDate(s.marks.forHeldLog(p.lastCommit(), p.held, safe))
		h.Set("electric-up-to-date", "")
	}
	h.Set("electric-has-data", strconv.FormatBool(!p.empty()))
	kind := KindCatchUp
	if req.Live {
		kind = KindLive
	}
	if !s.preamble(w, r, req, v, p.lastOffset(), kind) {
		return
	}
	h.Set("content-type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw, release := s.bodyWriter(w)
	defer release()
	bw.WriteByte('[')
	n := 0
	emit := func(msg []byte) error {
		if n > 0 {
			bw.WriteByte(',')
		}
		n++
		_, err := bw.Write(msg)
		return err
	}
	if err := s.eachLogMessage(v.shape.Handle, v, p, emit); err != nil {
		// The status is sent: the client sees a cut body and retries.
		s.log.Error("serving a shape's log failed", "shape", v.shape.Handle, "err", err)
		return
	}
	if upToDate != nil {
		emit(upToDate)
	}
	bw.WriteByte(']')
	bw.Flush()
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

// snapshotKind is the cache kind of a base response.
func snapshotKind(req *Request) Kind {
	if req.Offset.Start {
		return KindInitial
	}
	return KindCatchUp
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
	if kind == KindInitial {
		h.Set("cache-control", InitialCacheControl(s.cfg.Storage.Compaction.Retain))
	} else {
		h.Set("cache-control", CacheControl(kind, s.cfg.API.MaxAge, s.cfg.API.StaleAge))
	}
	etag := ETag(h.Get("electric-handle"), req.Offset, last)
	h.Set("etag", etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == etag {
		w.WriteHeader(http.StatusNotModified)
		return false
	}
	return true
}

// serveSSE streams the log as server-sent events: each message one data
// event, an up-to-date after each batch of changes that reaches the end
// (never one without changes before it: a stream opened at the end sends
// keep-alives until data arrives), keep-alive comments, closed after about
// a minute (the client reconnects).
func (s *Server) serveSSE(ctx context.Context, w http.ResponseWriter, req *Request, v *shapeView, at place) {
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
	bw, release := s.bodyWriter(w)
	defer release()
	for {
		safe := s.marks.floor(ctx, handle) // before the read: a true watermark
		p, err := s.planLog(handle, v, at)
		if err != nil || p.truncated {
			// The client reconnects and gets the 409 or the error then.
			if err != nil {
				s.log.Error("SSE read failed", "shape", handle, "err", err)
			}
			return
		}
		if !p.empty() {
			event := func(msg []byte) error {
				bw.WriteString("data: ")
				bw.Write(msg)
				_, err := bw.WriteString("\n\n")
				return err
			}
			err := s.eachLogMessage(handle, v, p, event)
			if err == nil && p.atEnd {
				err = event(UpToDate(s.marks.forHeldLog(p.lastCommit(), p.held, safe)))
			}
			if err == nil {
				err = bw.Flush()
			}
			if err != nil {
				s.log.Info("SSE stream ended", "shape", handle, "err", err)
				return
			}
			flusher.Flush()
			at = place{after: p.lastOffset()} // a change's offset: read in the generation holding it
			if !p.atEnd {
				continue
			}
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
