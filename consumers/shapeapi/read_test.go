package shapeapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
)

// readServer is a Server with what log reads need and nothing else.
func readServer(t *testing.T, chunkBytes int) (*Server, shapelog.Writer) {
	t.Helper()
	dir := t.TempDir()
	st, err := shapelog.NewFileStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wr.Close() })
	s := &Server{indexes: newIndexCache(4), chains: newLRU[*chainEntry](4), marks: &watermarks{}}
	s.cfg.Storage.Dir = dir
	s.cfg.API.ChunkBytes = chunkBytes
	return s, wr
}

// inserts is fragment seq of the transaction at lsn, with n inserts from id.
func inserts(lsn uint64, seq int, last bool, id, n int) *fanout.Fragment {
	f := &fanout.Fragment{Version: fanout.WireVersion, Shape: "sx", Xid: uint32(lsn), CommitLSN: pglogrepl.LSN(lsn), Seq: seq, Last: last}
	for i := range n {
		f.Changes = append(f.Changes, fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": str(fmt.Sprint(id + i))}})
	}
	return f
}

var readRel = Relation{Schema: "public", Table: "items", PK: []string{"id"}, Columns: []string{"id"}}

// readAllResponses reads the log from after as a client does, response by
// response, and returns the ids seen, the offset each response ended at
// and whether it was up-to-date.
func readAllResponses(t *testing.T, s *Server, after Offset) (ids []string, ends []string, upToDate []bool) {
	ids, ends, upToDate, _ = readAllSized(t, s, after)
	return ids, ends, upToDate
}

// readAllSized is readAllResponses with the size of each response's messages.
func readAllSized(t *testing.T, s *Server, after Offset) (ids []string, ends []string, upToDate []bool, sizes []int) {
	t.Helper()
	v := &shapeView{shape: &fanout.Shape{Handle: "sx"}, rel: readRel}
	for range 100 {
		p, err := s.planLog("sx", v, place{after: after})
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		bw := bufio.NewWriter(&body)
		n := 0
		if err := s.eachLogMessage("sx", v, p, func(msg []byte) error {
			var m struct {
				Value map[string]string `json:"value"`
			}
			if err := json.Unmarshal(msg, &m); err != nil {
				t.Fatalf("message %s: %v", msg, err)
			}
			ids = append(ids, m.Value["id"])
			n++
			_, err := bw.Write(msg)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		ends = append(ends, p.lastOffset().String())
		upToDate = append(upToDate, p.atEnd)
		bw.Flush()
		sizes = append(sizes, body.Len()+n+1)
		if p.atEnd {
			return ids, ends, upToDate, sizes
		}
		if n == 0 {
			t.Fatalf("a response that is not at the end carried nothing (after %v)", after)
		}
		after = p.lastOffset()
	}
	t.Fatal("no end after 100 responses")
	return
}

// A transaction cut into fragments is served whole: responses may be cut
// inside it (chunk_bytes), but none is up-to-date before its end, and
// until its last fragment is persisted nothing of it is served.
func TestLogResponsesNeverEndUpToDateInsideATransaction(t *testing.T) {
	s, wr := readServer(t, 1024)
	ctx := context.Background()
	if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(100, 0, true, 1, 1)}); err != nil {
		t.Fatal(err)
	}
	ids, _, _ := readAllResponses(t, s, Offset{Op: InfOp})
	if fmt.Sprint(ids) != "[1]" {
		t.Fatalf("ids %v", ids)
	}
	// Two of three fragments of transaction 200: none of it is served.
	if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(200, 0, false, 10, 20), inserts(200, 1, false, 30, 20)}); err != nil {
		t.Fatal(err)
	}
	ids, ends, utd := readAllResponses(t, s, Offset{Op: InfOp})
	if fmt.Sprint(ids) != "[1]" || !utd[len(utd)-1] {
		t.Fatalf("with transaction 200 in part: ids %v ends %v", ids, ends)
	}
	resume := Offset{Tx: 100, Op: InfOp}
	ids, _, _ = readAllResponses(t, s, resume)
	if len(ids) != 0 {
		t.Fatalf("resumed after 100 with 200 in part: %v", ids)
	}
	if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(200, 2, true, 50, 20)}); err != nil {
		t.Fatal(err)
	}
	ids, ends, utd = readAllResponses(t, s, resume)
	if len(ids) != 60 || ids[0] != "10" || ids[59] != "69" {
		t.Fatalf("after the last fragment: %d ids %v", len(ids), ids)
	}
	if len(ends) < 3 {
		t.Fatalf("60 rows in 1 KB responses came in %d responses", len(ends))
	}
	for i, u := range utd {
		if u != (i == len(utd)-1) {
			t.Fatalf("response %d of %d ending at %s up-to-date %v", i, len(utd), ends[i], u)
		}
	}
	// Every offset handed out resumes exactly.
	for i, e := range ends[:len(ends)-1] {
		o, _, err := ParseOffset(e)
		if err != nil {
			t.Fatal(err)
		}
		rest, _, _ := readAllResponses(t, s, o)
		if len(rest) == 0 || rest[len(rest)-1] != "69" {
			t.Fatalf("resumed from %s (response %d): %v", e, i, rest)
		}
	}
}

// A large transaction after the index learned the log (its recent
// messages then hold only the transaction's tail) is served whole from
// any offset before it.
func TestALargeTransactionAfterTheIndexIsServedWhole(t *testing.T) {
	s, wr := readServer(t, 10000)
	ctx := context.Background()
	for i := range 5 {
		if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(uint64(100+i), 0, true, i, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	_, ends, _ := readAllResponses(t, s, Offset{Op: InfOp})
	if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(1000, 0, false, 1000, 700), inserts(1000, 1, true, 2000, 700)}); err != nil {
		t.Fatal(err)
	}
	for _, from := range append([]string{"0_inf"}, ends...) {
		o, _, _ := ParseOffset(from)
		ids, ends, utd := readAllResponses(t, s, o)
		if len(ids) == 0 || ids[len(ids)-1] != "2699" || !utd[len(utd)-1] {
			t.Fatalf("from %s: %d ids, last %v, ends %v", from, len(ids), ids[max(len(ids)-1, 0):], ends)
		}
	}
}

// A fragment larger than api.chunk_bytes is cut at a message: responses
// stay about chunk_bytes, and every cut offset resumes exactly.
func TestResponsesAreCutInsideLargeFragments(t *testing.T) {
	s, wr := readServer(t, 10000)
	if _, err := wr.Append(context.Background(), []*fanout.Fragment{inserts(1000, 0, true, 1000, 2000)}); err != nil {
		t.Fatal(err)
	}
	ids, ends, _, sizes := readAllSized(t, s, Offset{Op: InfOp})
	if len(ids) != 2000 {
		t.Fatalf("%d rows", len(ids))
	}
	for i, n := range sizes[:len(sizes)-1] {
		if n > 10000 || n < 8000 {
			t.Fatalf("response %d of %d is %d bytes (limit 10000): sizes %v", i, len(sizes), n, sizes)
		}
	}
	for i := 0; i < len(ends)-1; i += 5 {
		e := ends[i]
		o, _, _ := ParseOffset(e)
		rest, _, _ := readAllResponses(t, s, o)
		if len(rest) == 0 || rest[len(rest)-1] != "2999" || len(rest)+indexOf(ids, rest[0]) != 2000 {
			t.Fatalf("resumed from %s: %d rows from %v", e, len(rest), rest[:1])
		}
	}
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}

// A base without rows is one response (its snapshot-end) from -1, and its
// offset leads to the log, never to the base again.
func TestAnEmptyBaseLeadsToTheLog(t *testing.T) {
	chain, err := shapelog.LoadChain(t.TempDir(), "sx") // generation 0, no snapshot
	if err != nil {
		t.Fatal(err)
	}
	v := &shapeView{shape: &fanout.Shape{Handle: "sx"}, rel: readRel, chain: chain}
	start, err := v.locate(&Request{Offset: StartOffset, Def: Definition{Log: "full"}})
	if err != nil || !start.inBase || start.row != 0 {
		t.Fatalf("-1: %+v %v", start, err)
	}
	next, err := v.locate(&Request{Offset: BaseOffset(0, 0), Def: Definition{Log: "full"}})
	if err != nil || next.inBase {
		t.Fatalf("after the empty base's response: %+v %v, want the log", next, err)
	}
	if _, err := v.locate(&Request{Offset: BaseOffset(0, 1), Def: Definition{Log: "full"}}); err == nil {
		t.Fatal("a row offset past the base was accepted")
	}
}

// While a move-in window is open, the records after it are held back
// though their transactions are complete and the safe LSN passed them: the
// up-to-date watermark stays below them, or a client that drops changes at
// or below its watermark (pglite-sync) would lose them when they are served.
func TestWatermarksStayBelowHeldRecords(t *testing.T) {
	s, wr := readServer(t, 1<<20)
	ready := make(chan struct{})
	close(ready)
	s.marks = &watermarks{partitions: 1, marks: map[int]*partitionMark{0: {read: time.Now().Add(time.Hour), ready: ready}}}
	ctx := context.Background()
	opening := inserts(200, 0, true, 2, 1)
	opening.OpensWindow = true
	if _, err := wr.Append(ctx, []*fanout.Fragment{inserts(100, 0, true, 1, 1), opening, inserts(300, 0, true, 3, 1)}); err != nil {
		t.Fatal(err)
	}
	v := &shapeView{shape: &fanout.Shape{Handle: "sx"}, rel: readRel}
	for _, after := range []Offset{{Op: InfOp}, {Tx: 100, Op: InfOp}} {
		p, err := s.planLog("sx", v, place{after: after})
		if err != nil {
			t.Fatal(err)
		}
		if !p.atEnd || p.held != 200 {
			t.Fatalf("after %v: at end %v, held %v; want the end, held from 200", after, p.atEnd, p.held)
		}
		if w := s.marks.forHeldLog(p.lastCommit(), p.held, 1000); w != 199 {
			t.Fatalf("after %v: watermark %v with records held from 200", after, w)
		}
	}
	closing := inserts(400, 0, true, 4, 1)
	closing.ClosesWindows = 1
	if _, err := wr.Append(ctx, []*fanout.Fragment{closing}); err != nil {
		t.Fatal(err)
	}
	ids, _, _ := readAllResponses(t, s, Offset{Tx: 100, Op: InfOp})
	if fmt.Sprint(ids) != "[2 3 4]" {
		t.Fatalf("after the window closed: ids %v", ids)
	}
	p, err := s.planLog("sx", v, place{after: Offset{Tx: 400, Op: InfOp}})
	if err != nil {
		t.Fatal(err)
	}
	if w := s.marks.forHeldLog(p.lastCommit(), p.held, 1000); p.held != 0 || w != Watermark(400, 1000) {
		t.Fatalf("nothing held: held %v, watermark %v", p.held, w)
	}
}
