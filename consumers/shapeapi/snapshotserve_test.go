package shapeapi

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// A version 2 snapshot is served by copying its chunk files, and each
// response is byte for byte the one encoded from the rows (but for the
// newlines between messages).
func TestStreamSnapshotChunkMatchesEncodedChunk(t *testing.T) {
	dir := t.TempDir()
	sh := &fanout.Shape{Handle: "sstream", Table: "public.items", PrimaryKey: []string{"id"},
		Schema: []fanout.Column{{Name: "id", Type: "integer"}, {Name: "owner", Type: "integer"}, {Name: "title", Type: "text"}}}
	w, err := shapelog.NewSnapshotWriter(dir, sh.Handle, 3, sh.Table, []string{"id", "owner", "title"}, sh.PrimaryKey, 2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	titles := []string{"plain", "a \"quoted\" / slash\n", "ü \u2028 \x01", "", "last"}
	for i, title := range titles {
		row := fanout.Row{"id": str(fmt.Sprint(i + 1)), "owner": nil, "title": str(title)}
		if i == 1 {
			row["id"] = str("2/2")
		}
		if err := w.Add(row); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := w.Complete(visibility.Snapshot{Xmin: 100, Xmax: 110, Xip: []uint64{105}})
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Chunks) != 3 {
		t.Fatalf("%d chunks", len(snap.Chunks))
	}
	cur, err := shapelog.CurrentSnapshot(dir, sh.Handle)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), chunkCache: newChunkCache(1 << 20)}
	v := &shapeView{shape: sh, rel: NewRelation(sh), snap: &snapshotView{snap: cur}, schema: `{}`}
	for i := range cur.Chunks {
		req := &Request{Offset: Offset{Op: uint64(i - 1)}}
		if i == 0 {
			req.Offset = StartOffset
		}
		streamed := httptest.NewRecorder()
		streamed.Header().Set("electric-handle", sh.Handle)
		s.streamSnapshotChunk(streamed, httptest.NewRequest("GET", "/v1/shape", nil), req, v, i)
		encoded := httptest.NewRecorder()
		encoded.Header().Set("electric-handle", sh.Handle)
		s.serveSnapshotChunk(encoded, httptest.NewRequest("GET", "/v1/shape", nil), req, v, i)
		if streamed.Code != 200 || encoded.Code != 200 {
			t.Fatalf("chunk %d: status %d and %d: %s", i, streamed.Code, encoded.Code, streamed.Body)
		}
		got, want := bytes.ReplaceAll(streamed.Body.Bytes(), []byte("\n"), nil), encoded.Body.Bytes()
		if !bytes.Equal(got, want) {
			t.Errorf("chunk %d streamed:\n%s\nencoded:\n%s", i, got, want)
		}
		if n := streamed.Header().Get("content-length"); n != fmt.Sprint(streamed.Body.Len()) {
			t.Errorf("chunk %d: content-length %s, body %d bytes", i, n, streamed.Body.Len())
		}
		for _, k := range []string{"electric-offset", "etag", "cache-control", "electric-schema", "content-type"} {
			if streamed.Header().Get(k) != encoded.Header().Get(k) {
				t.Errorf("chunk %d header %s: %q, encoded %q", i, k, streamed.Header().Get(k), encoded.Header().Get(k))
			}
		}
		again := httptest.NewRecorder()
		again.Header().Set("electric-handle", sh.Handle)
		cond := httptest.NewRequest("GET", "/v1/shape", nil)
		cond.Header.Set("If-None-Match", streamed.Header().Get("etag"))
		s.streamSnapshotChunk(again, cond, req, v, i)
		if again.Code != 304 || again.Body.Len() != 0 {
			t.Errorf("chunk %d with If-None-Match of its etag: status %d, %d body bytes; want 304 and none", i, again.Code, again.Body.Len())
		}
	}
}
