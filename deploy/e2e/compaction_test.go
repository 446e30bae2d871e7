package e2e

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// compactionEnv makes the consumers compact a log as soon as it holds a
// few kilobytes (storage.compaction.*), keeping replaced generations
// served for retain.
func compactionEnv(retain time.Duration) []string {
	return []string{
		"FANOUT_STORAGE_COMPACTION_MIN_LOG_BYTES=4096",
		"FANOUT_STORAGE_COMPACTION_MIN_INTERVAL=0s",
		"FANOUT_STORAGE_COMPACTION_RETAIN=" + retain.String(),
	}
}

// shapeReader reads a shape through the chain of its generations as a
// client of the HTTP API does: the current generation's base when it
// starts, then the logs after its place (the end of that base, or the
// offset of the last operation it applied), skipping what the initial
// snapshot saw, in whole transactions. Its rows are what such a client
// ends with.
type shapeReader struct {
	dir, handle string
	pk          []string
	rows        map[string]row
	inBase      bool   // its place is the end of generation baseGen's base
	baseGen     uint64 // the generation whose base it started from
	offset      shapelog.OpOffset
}

func newShapeReader(dir, handle string, pk []string) *shapeReader {
	return &shapeReader{dir: dir, handle: handle, pk: pk}
}

func (r *shapeReader) clone() *shapeReader {
	c := *r
	c.rows = map[string]row{}
	for k, v := range r.rows {
		c.rows[k] = v
	}
	return &c
}

func (r *shapeReader) key(rw fanout.Row) string {
	parts := make([]string, len(r.pk))
	for i, c := range r.pk {
		if rw[c] != nil {
			parts[i] = *rw[c]
		}
	}
	return strings.Join(parts, "/")
}

// poll reads everything after the reader's place. An offset in a
// generation no longer served is shapelog.ErrExpired (the HTTP API's 409).
func (r *shapeReader) poll() error {
	chain, err := shapelog.LoadChain(r.dir, r.handle)
	if err != nil {
		return err
	}
	now := time.Now()
	var g *shapelog.Generation
	switch {
	case r.rows == nil:
		g = chain.Current()
		r.rows, r.inBase, r.baseGen = map[string]row{}, true, g.Number
		if g.Base != nil {
			if err := g.Base.EachRow(func(rw fanout.Row) error {
				r.rows[r.key(rw)] = row(rw)
				return nil
			}); err != nil {
				return err
			}
		}
	case r.inBase:
		g, err = chain.LocateBase(r.baseGen, now)
	default:
		g, err = chain.LocateLog(r.offset, now)
	}
	if err != nil {
		return err
	}
	_, err = chain.Read(g.LogStart(), func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		if xid, _ := e.Xid(); chain.Snapshot != nil && chain.Snapshot.Snapshot.Visible(xid) {
			return nil
		}
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		for i, c := range f.Changes {
			op := uint64(f.Seq)<<shapelog.OpBits + 2*uint64(i)
			keyChange := c.Op == fanout.OpUpdate && c.Old != nil && r.key(c.Old) != r.key(c.Row)
			last := op
			if keyChange {
				last++
			}
			o := shapelog.OpOffset{LSN: f.CommitLSN, Op: last}
			if !r.inBase && o.Compare(r.offset) <= 0 {
				continue // it has this one
			}
			r.apply(c)
			r.offset, r.inBase = o, false
		}
		return nil
	})
	return err
}

func (r *shapeReader) apply(c fanout.Change) {
	switch c.Op {
	case fanout.OpInsert:
		r.rows[r.key(c.Row)] = row(c.Row)
	case fanout.OpUpdate:
		prev := r.rows[r.key(c.Row)]
		if c.Old != nil {
			prev = r.rows[r.key(c.Old)]
			delete(r.rows, r.key(c.Old))
		}
		merged := row{}
		for k, v := range prev {
			merged[k] = v
		}
		for k, v := range c.Row {
			merged[k] = v
		}
		r.rows[r.key(c.Row)] = merged
	case fanout.OpDelete:
		delete(r.rows, r.key(c.Old))
	case fanout.OpTruncate:
		r.rows = map[string]row{}
	}
}

func (r *shapeReader) list() []row {
	out := []row{}
	for _, v := range r.rows {
		out = append(out, v)
	}
	sortRows(out)
	return out
}

// checkReader polls r and compares its rows with the shape's query.
func (s *stack) checkReader(r *shapeReader, d shapeDef, who string) {
	s.t.Helper()
	if err := r.poll(); err != nil {
		s.t.Fatalf("%s of shape %s: %v", who, d.handle, err)
	}
	want := s.expectedRows(d.table, d.where, d.columns)
	if got := r.list(); renderRows(got) != renderRows(want) {
		s.t.Fatalf("%s of shape %s (WHERE %s) differs from its query: %s", who, d.handle, d.where, rowDiff(got, want))
	}
}

// generationOf is a shape's current generation on disk.
func (s *stack) generationOf(handle string) uint64 {
	s.t.Helper()
	chain, err := shapelog.LoadChain(s.storageDir(), handle)
	if err != nil {
		s.t.Fatal(err)
	}
	return chain.Current().Number
}

// compactedTo waits until every shape's current generation is above gen.
func (s *stack) compactedTo(defs []shapeDef, gen uint64) {
	s.t.Helper()
	for _, d := range defs {
		testenv.Eventually(s.t, 60*time.Second, fmt.Sprintf("shape %s compacted past generation %d", d.handle, gen), func() bool {
			chain, err := shapelog.LoadChain(s.storageDir(), d.handle)
			return err == nil && chain.Current().Number > gen
		})
	}
}

func compactedItemShapes(s *stack) []shapeDef {
	return []shapeDef{
		s.addShape("public.items", "owner = 1"),
		s.addShape("public.items", "owner IN (1, 2)"),
		s.addShape("public.items", ""),
		s.addShape("public.items", "owner < 3", "id", "owner"),
	}
}

// startCompactingStack is a stack whose consumer compacts small logs
// (compactionEnv), with the items table's history recorded and the
// shapes of compactedItemShapes, running.
func startCompactingStack(t *testing.T, retain time.Duration) (*stack, []shapeDef) {
	s := newStack(t)
	s.env = append(s.env, compactionEnv(retain)...)
	s.exec(itemsTable)
	s.recordHistory("public.items")
	defs := compactedItemShapes(s)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	return s, defs
}

// updateRound changes many rows of items: updates that move rows between
// the shapes, a primary-key change, deletes and inserts.
func (s *stack) updateRound(round int) {
	s.t.Helper()
	s.exec(fmt.Sprintf(`UPDATE items SET title = 'r%d-' || id, owner = (owner + 1) %% 4 WHERE id %% 3 = %d`, round, round%3))
	s.exec(fmt.Sprintf(`UPDATE items SET title = title || '+' WHERE id %% 5 = %d`, round%5))
	s.exec(fmt.Sprintf(`BEGIN; DELETE FROM items WHERE id = %d; INSERT INTO items VALUES (%d, %d, 'new', NULL); UPDATE items SET id = id + 10000 WHERE id = %d; COMMIT`,
		10+round, 5000+round, round%4, 20+round))
}

// The history oracle on compacted logs: while the consumers compact the
// shapes round after round, each shape's rows equal its query at every
// point, a reader that started before the first compaction and follows
// along ends exact, so does one that resumes from an offset it held
// several compactions ago (within retain), and one that resumes past
// retain is refused (409) and ends exact from the current generation.
// Every base still on disk is the committed history's state at its point
// and the logs after it follow the history.
func TestCompactedLogsFollowHistory(t *testing.T) {
	const retain = 15 * time.Second
	s, defs := startCompactingStack(t, retain)
	s.exec(`INSERT INTO items SELECT g, g % 4, 't' || g, CASE WHEN g % 50 = 0 THEN repeat('x', 5000) END FROM generate_series(1, 400) g`)
	s.drain()

	pk := s.primaryKey("public.items")
	readers := make([]*shapeReader, len(defs))
	for i, d := range defs {
		s.shapeRows(d.handle) // waits for the snapshot
		readers[i] = newShapeReader(s.storageDir(), d.handle, pk)
		s.checkReader(readers[i], d, "a reader that started before any compaction")
	}
	var early []*shapeReader
	for round := 0; round < 6; round++ {
		s.updateRound(round)
		s.drain()
		s.checkShapes(defs)
		for i, d := range defs {
			s.checkReader(readers[i], d, fmt.Sprintf("the reader following along, round %d", round))
		}
		if round == 1 {
			s.compactedTo(defs, 0)
			for _, r := range readers {
				early = append(early, r.clone())
			}
		}
	}
	s.compactedTo(defs, 1)
	for i, d := range defs {
		s.checkReader(early[i], d, "a reader resuming from an offset of round 1, within retain")
	}
	// fanoutctl shows it: each shape's generation, rows and log size, and
	// what the consumer's compaction did.
	ls := s.ctl("shape", "ls")
	for _, d := range defs {
		for _, line := range strings.Split(ls, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == d.handle && !strings.Contains(line, "KiB") && !strings.Contains(line, " B ") {
				t.Errorf("shape ls shows no log and disk sizes of shape %s: %q", d.handle, line)
			}
		}
	}
	testenv.Eventually(t, 10*time.Second, "fanoutctl status to show the compactions", func() bool {
		st := s.ctl("status")
		return strings.Contains(st, "compaction c1") && !strings.Contains(st, "compaction c1\t0 done")
	})
	if n := s.checkLogsFollowHistory(defs); n > 0 {
		t.Fatalf("%d compacted logs differ from the committed history", n)
	}

	// Past retain: the old offset is refused, and a new read is exact.
	late := early[0]
	more := 10
	testenv.EventuallyErr(t, 6*retain, "an offset older than retain to be refused", func() error {
		more++
		s.updateRound(more) // keeps compactions going
		s.drain()
		if err := late.clone().poll(); !errors.Is(err, shapelog.ErrExpired) {
			return fmt.Errorf("a reader's offset from round 1 read: %v", err)
		}
		return nil
	})
	s.checkReader(newShapeReader(s.storageDir(), defs[0].handle, pk), defs[0], "a reader starting again after a 409")
	if n := s.checkLogsFollowHistory(defs); n > 0 {
		t.Fatalf("%d compacted logs differ from the committed history after generations expired", n)
	}
}

// SIGKILL of the consumer at each step of a compaction, in a random order:
// readers stay exact, the logs follow the history, no transaction
// is broken, and the generations on disk are all complete.
func TestCompactionKilledAtRandomSteps(t *testing.T) {
	s, defs := startCompactingStack(t, time.Minute)
	s.exec(`INSERT INTO items SELECT g, g % 4, 't' || g, NULL FROM generate_series(1, 400) g`)
	s.drain()
	pk := s.primaryKey("public.items")
	readers := make([]*shapeReader, len(defs))
	for i, d := range defs {
		s.shapeRows(d.handle)
		readers[i] = newShapeReader(s.storageDir(), d.handle, pk)
		s.checkReader(readers[i], d, "a reader")
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	kills := 0
	steps := append([]shapelog.CompactStep(nil), shapelog.CompactSteps...)
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	for round, step := range steps { // every step once, in a random order
		t.Logf("round %d: the consumer is killed when a compaction reaches step %s", round, step)
		s.procs["c1"].Stop(10 * time.Second)
		p := s.start("c1", "consumer", "FANOUT_CONSUMER_ID=c1", "FANOUT_TEST_COMPACTION_KILL_AT="+string(step))
		for i := 0; ; i++ {
			s.updateRound(100 + round*50 + i)
			// The consumer persists and compacts what the round wrote,
			// reaching the step within a second or two, or not yet.
			if err := p.Wait(2 * time.Second); err == nil || !strings.Contains(err.Error(), "still running") {
				break
			}
			if i == 30 {
				t.Fatalf("no compaction reached step %s after 30 update rounds", step)
			}
		}
		kills++
		if !strings.Contains(p.Output(), "killing this consumer at a compaction step") {
			t.Fatalf("the consumer exited, but not at the kill seam:\n%s", p.Output())
		}
		s.startConsumer("c1")
		s.drain()
		s.checkShapes(defs)
		for i, d := range defs {
			s.checkReader(readers[i], d, fmt.Sprintf("a reader after kill %d", kills))
		}
	}
	if n := s.checkLogsFollowHistory(defs); n > 0 {
		t.Fatalf("%d compacted logs differ from the committed history", n)
	}
	if logs := scanShapeLogs(t, s.storageDir()); logs.brokenTxns > 0 {
		t.Fatalf("%d broken transactions in the logs", logs.brokenTxns)
	}
	for _, d := range defs {
		chain, err := shapelog.LoadChain(s.storageDir(), d.handle)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("shape %s: current generation %d", d.handle, chain.Current().Number)
	}
}

// handleNow is the handle a client synced, once it has one.
func (c *client) handleNow() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hand
}

// changeMessages are the change messages of msgs (control messages left
// out), as comparable strings.
func changeMessages(msgs []map[string]any) []string {
	var out []string
	for _, m := range msgs {
		if _, ok := m["key"]; !ok {
			continue
		}
		h, _ := m["headers"].(map[string]any)
		out = append(out, fmt.Sprintf("%v %v %v lsn=%v op=%v txids=%v", h["operation"], m["key"], m["value"], h["lsn"], h["op_position"], h["txids"]))
	}
	return out
}

// The unmodified Electric clients across compactions: clients that
// synced before them stay exact while the consumer compacts under them
// (long poll and SSE, 1.5 and 1.0, which pglite-sync pins), new clients
// start from the compacted base and end exact, and a client resuming
// from an offset and handle it held several compactions ago gets exactly
// the change messages (lsn, op_position, txids included) that a client
// following along got after that offset.
func TestElectricClientsAcrossCompactions(t *testing.T) {
	s := newStack(t)
	s.env = append(s.env, compactionEnv(5*time.Minute)...)
	s.exec(electricItems)
	s.exec(`INSERT INTO items SELECT g, g % 3, 't' || g, g, g % 2 = 0, jsonb_build_object('g', g), g / 4.0, ARRAY['a' || g] FROM generate_series(1, 300) g`)
	s.startFlushd()
	s.startConsumer("c1")
	s.startIngest()
	s.waitSlot()
	url := s.startShapeAPI()

	owner1 := map[string]any{"table": "items", "where": "owner = 1"}
	follow := s.startClient("1.5-follow", clientArgs{Client: "1.5", URL: url, Params: owner1, Record: true})
	sse := s.startClient("1.5-sse", clientArgs{Client: "1.5", URL: url, Params: owner1, SSE: true})
	old := s.startClient("1.0-follow", clientArgs{Client: "1.0", URL: url, Params: owner1})
	for _, c := range []*client{follow, sse, old} {
		s.waitEqual(c, "items", "owner = 1", nil)
	}
	// The offset and handle a client holds now, before any compaction.
	first := s.startClient("1.5-first", clientArgs{Client: "1.5", URL: url, Params: owner1, Mode: "messages", Once: true})
	<-first.done
	first.mu.Lock()
	offset, handle := first.off, first.hand
	first.mu.Unlock()
	follow.mu.Lock()
	seenBefore := len(follow.msgs)
	follow.mu.Unlock()

	def := shapeDef{handle: handle, table: "public.items", where: "owner = 1"}
	for round := 0; round < 4; round++ {
		s.exec(fmt.Sprintf(`UPDATE items SET title = 'r%d-' || id, score = score + 1 WHERE owner = 1 OR id %% 7 = %d`, round, round))
		s.exec(fmt.Sprintf(`UPDATE items SET owner = (owner + 1) %% 3 WHERE id %% 11 = %d`, round))
		s.exec(fmt.Sprintf(`UPDATE items SET id = id + 1000 WHERE id = %d`, 30+3*round))
		s.drain()
		for _, c := range []*client{follow, sse, old} {
			s.waitEqual(c, "items", "owner = 1", nil)
		}
		if round == 1 {
			s.compactedTo([]shapeDef{def}, 0)
		}
	}
	s.compactedTo([]shapeDef{def}, 1)
	s.waitEqual(follow, "items", "owner = 1", nil)

	// A new client starts from the compacted base.
	fresh := s.startClient("1.5-new", clientArgs{Client: "1.5", URL: url, Params: owner1})
	fresh10 := s.startClient("1.0-new", clientArgs{Client: "1.0", URL: url, Params: owner1})
	s.waitEqual(fresh, "items", "owner = 1", nil)
	s.waitEqual(fresh10, "items", "owner = 1", nil)
	if h := fresh.handleNow(); h != handle {
		t.Fatalf("the compactions changed the shape's handle: %s, then %s", handle, h)
	}

	// A client resuming from the old offset gets what the follower got.
	for _, version := range []string{"1.5", "1.0"} {
		resumed := s.startClient(version+"-resumed", clientArgs{Client: version, URL: url, Params: owner1, Mode: "messages", Once: true, Offset: offset, Handle: handle})
		<-resumed.done
		resumed.mu.Lock()
		got, errs := changeMessages(resumed.msgs), resumed.errs
		resumed.mu.Unlock()
		follow.mu.Lock()
		want := changeMessages(follow.msgs[seenBefore:])
		follow.mu.Unlock()
		if len(errs) > 0 || len(want) == 0 || !reflect.DeepEqual(got, want) {
			t.Fatalf("a %s client resuming from %s (before the compactions) got %d change messages (errors %v), the follower %d after that offset; first difference: %s",
				version, offset, len(got), errs, len(want), firstDifference(got, want))
		}
		t.Logf("a %s client resumed from %s across the compactions: %d change messages, as the follower", version, offset, len(got))
	}
}

func firstDifference(a, b []string) string {
	for i := range max(len(a), len(b)) {
		switch {
		case i >= len(a):
			return "missing " + b[i]
		case i >= len(b):
			return "extra " + a[i]
		case a[i] != b[i]:
			return a[i] + " where the follower got " + b[i]
		}
	}
	return "none"
}
