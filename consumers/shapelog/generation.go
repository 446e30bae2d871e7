package shapelog

// Compaction generations (LAYOUT.md, "Compaction (generations)"): where
// they are on disk, what their manifests say, and a shape's chain of them
// as readers see it. Compacting a shape (compact.go) makes generation K: a
// base holding the shape's rows at X_K and a log of the records after X_K;
// the writer then appends to that log. Readers find the current generation
// and, for an offset handed out earlier, the generation that offset is in.

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// genManifestFormat is the manifest format this build writes and reads.
const genManifestFormat = 1

func compactRoot(dir, handle string) string {
	return filepath.Join(dir, "shapes", handle, "compact")
}

func genDir(dir, handle string, k uint64) string {
	return filepath.Join(compactRoot(dir, handle), "c"+strconv.FormatUint(k, 10))
}

// genLogPath is the log of generation k: shapes/<handle>/log for 0.
func genLogPath(dir, handle string, k uint64) string {
	if k == 0 {
		return logPath(dir, handle)
	}
	return filepath.Join(genDir(dir, handle, k), "log")
}

// OpOffset is a place among a shape's operations as clients see it
// (LAYOUT.md, "Offsets clients hold"): a transaction's commit LSN and an
// operation index, op = seq<<OpBits + 2*i (+1 for the insert half of a
// primary-key change), so a position names the same change in every
// generation's log.
type OpOffset struct {
	LSN pglogrepl.LSN
	Op  uint64
}

// OpBits is where a fragment's seq starts in an operation index.
const OpBits = 24

// RecordOverhead is what a log record adds around a fragment's wire bytes:
// its frame and its header.
const RecordOverhead = headerSize + recordHeaderSize

// Compare orders offsets.
func (o OpOffset) Compare(p OpOffset) int {
	return cmp.Or(cmp.Compare(o.LSN, p.LSN), cmp.Compare(o.Op, p.Op))
}

func (o OpOffset) String() string {
	return strconv.FormatUint(uint64(o.LSN), 10) + "_" + strconv.FormatUint(o.Op, 10)
}

// lastOp is the offset of the last operation of f, a fragment keyed by
// pk, and false for a fragment without changes. A primary-key change (an
// update whose Old key differs from its Row key) is two operations, the
// insert half last.
func lastOp(f *fanout.Fragment, pk []string) (OpOffset, bool) {
	n := len(f.Changes)
	if n == 0 {
		return OpOffset{}, false
	}
	op := uint64(f.Seq)<<OpBits + 2*uint64(n-1)
	if c := f.Changes[n-1]; c.Op == fanout.OpUpdate && c.Old != nil && !sameKey(c.Old, c.Row, pk) {
		op++
	}
	return OpOffset{LSN: f.CommitLSN, Op: op}, true
}

// sameKey reports whether rows a and b have the same primary key values.
func sameKey(a, b fanout.Row, pk []string) bool {
	for _, c := range pk {
		x, y := a[c], b[c]
		if (x == nil) != (y == nil) || (x != nil && *x != *y) {
			return false
		}
	}
	return true
}

// genManifest is c<K>/manifest.json: written last, it is the commit point
// of generation K (LAYOUT.md).
type genManifest struct {
	Format     int    `json:"format"`
	Handle     string `json:"handle"`
	Generation uint64 `json:"generation"`
	// Snapshot is the initial snapshot generation the base was built on,
	// Visibility that snapshot's pg_snapshot: readers of this generation's
	// log skip the transactions it saw, as everywhere.
	Snapshot   uint64              `json:"snapshot_generation"`
	Visibility visibility.Snapshot `json:"visibility"`
	// XOffset is X_K as a byte offset in generation K-1's log: that log is
	// read up to there by readers of generation K-1. Acceptor is the state
	// of the acceptor there (its last position is X_K's): this
	// generation's log starts empty and is read from it.
	XOffset  int64         `json:"x_offset"`
	Acceptor acceptorState `json:"acceptor"`
	// End is the client offset of the last operation the base holds (nil
	// when none ever was served); an offset at or after it resumes in this
	// generation's log.
	End *opOffsetJSON `json:"end_offset,omitempty"`
	// LastXid is the id of the last transaction the base holds beyond the
	// initial snapshot's rows (0: none; the snapshot's visibility says
	// which transactions those rows hold).
	LastXid uint32 `json:"last_xid"`
	// The base: chunk files in the snapshot's chunk format.
	ChunkVersion int             `json:"chunk_version"`
	Table        string          `json:"table"`
	Columns      []string        `json:"columns"`
	PrimaryKey   []string        `json:"primary_key"`
	Rows         int64           `json:"rows"`
	Bytes        int64           `json:"bytes"`
	Chunks       []SnapshotChunk `json:"chunks"`
	// Retain is how long generation K-1 is still served after Completed
	// (it stays on disk twice as long): storage.compaction.retain when
	// this generation was made, so every reader applies the same.
	Retain string `json:"retain"`
	// SourceBytes is what the base replaced: generation K-1's base and its
	// log up to X_K. TailBytes is the log copied after X_K.
	SourceBytes int64     `json:"source_bytes"`
	TailBytes   int64     `json:"tail_bytes"`
	Completed   time.Time `json:"completed"`
}

type acceptorState struct {
	MaxEpoch uint64 `json:"max_epoch"`
	Last     string `json:"last_lsn,omitempty"`
	Seq      int    `json:"last_seq"`
	Has      bool   `json:"has"`
}

func encodeAcceptor(a acceptor) acceptorState {
	s := acceptorState{MaxEpoch: a.maxEpoch, Has: a.has}
	if a.has {
		s.Last, s.Seq = a.last.CommitLSN.String(), a.last.Seq
	}
	return s
}

func (s acceptorState) decode() (acceptor, error) {
	a := acceptor{maxEpoch: s.MaxEpoch, has: s.Has}
	if s.Has {
		lsn, err := pglogrepl.ParseLSN(s.Last)
		if err != nil {
			return a, fmt.Errorf("acceptor position %q: %w", s.Last, err)
		}
		a.last = fanout.Position{CommitLSN: lsn, Seq: s.Seq}
	}
	return a, nil
}

type opOffsetJSON struct {
	LSN string `json:"lsn"`
	Op  uint64 `json:"op"`
}

func encodeOpOffset(o OpOffset) *opOffsetJSON {
	return &opOffsetJSON{LSN: o.LSN.String(), Op: o.Op}
}

// readGenManifest reads generation k's manifest; ok is false when there
// is none (the generation is incomplete, or gone).
func readGenManifest(dir, handle string, k uint64) (m *genManifest, ok bool, err error) {
	path := filepath.Join(genDir(dir, handle, k), manifestName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("compacted generation %d of shape %s: read manifest: %w", k, handle, err)
	}
	m = &genManifest{}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, false, &ShapeError{Shape: handle, Err: fmt.Errorf("compacted generation %d of shape %s: manifest %s is not valid JSON: %w (storage damaged; move the shape's compact folder away and the shape is compacted again from its log, if the log is still there)", k, handle, path, err)}
	}
	if m.Format > genManifestFormat {
		return nil, false, fmt.Errorf("compacted generation %d of shape %s: manifest format %d is newer than this build reads (%d): upgrade this service", k, handle, m.Format, genManifestFormat)
	}
	return m, true, nil
}

// listGenerations lists the numbers of the c<K> folders of handle,
// complete or not, ascending.
func listGenerations(dir, handle string) ([]uint64, error) {
	ks, err := numberedEntries(compactRoot(dir, handle), "c")
	if err != nil {
		return nil, fmt.Errorf("shape %s: list compacted generations: %w", handle, err)
	}
	return slices.DeleteFunc(ks, func(k uint64) bool { return k == 0 }), nil
}

// numberedEntries lists, ascending, the numbers N of the entries of folder
// root named prefix<N> (none when root does not exist).
func numberedEntries(root, prefix string) ([]uint64, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ns []uint64
	for _, e := range ents {
		if rest, ok := strings.CutPrefix(e.Name(), prefix); ok {
			if n, err := strconv.ParseUint(rest, 10, 64); err == nil {
				ns = append(ns, n)
			}
		}
	}
	slices.Sort(ns)
	return ns, nil
}

// currentLog is the log the writer appends to: the log of the highest
// complete generation, with the acceptor state its reading starts from.
// Most shapes were never compacted: then it is one failed stat more than
// the log's own open.
func currentLog(dir, handle string) (path string, start acceptor, err error) {
	if _, err := os.Stat(compactRoot(dir, handle)); errors.Is(err, os.ErrNotExist) {
		return logPath(dir, handle), acceptor{}, nil
	}
	ks, err := listGenerations(dir, handle)
	if err != nil {
		return "", acceptor{}, err
	}
	for i := len(ks) - 1; i >= 0; i-- {
		m, ok, err := readGenManifest(dir, handle, ks[i])
		if err != nil {
			return "", acceptor{}, err
		}
		if !ok {
			continue // incomplete: a compaction that did not finish
		}
		start, err := m.Acceptor.decode()
		if err != nil {
			return "", acceptor{}, fmt.Errorf("compacted generation %d of shape %s: %w", ks[i], handle, err)
		}
		return genLogPath(dir, handle, ks[i]), start, nil
	}
	return logPath(dir, handle), acceptor{}, nil
}

// Generation is one generation of a shape as a reader sees it: a base (the
// shape's rows at a point of its log) and the log of the records after it.
type Generation struct {
	// Number is K: 0 is the initial snapshot and the shape's first log.
	Number uint64
	// Base holds the rows the generation starts from, read like a snapshot
	// (same chunk format; Base.Snapshot is the initial snapshot's
	// visibility, which readers of every generation's log apply). nil for
	// generation 0 of a shape without a snapshot.
	Base *Snapshot
	// Completed is when the generation was made (generation 0: when its
	// snapshot completed).
	Completed time.Time
	// Superseded is when a newer generation replaced it as the one new
	// readers start from (zero while it is current); Retain is how long
	// after that it is still served, and it stays on disk twice as long.
	Superseded time.Time
	Retain     time.Duration
	// End is the client offset of the last operation the base holds; an
	// offset at or after it resumes in this generation's log. HasEnd is
	// false for generation 0 and for a base that never held one.
	End    OpOffset
	HasEnd bool
	// LastXid is the last transaction the base holds beyond the initial
	// snapshot's rows (0: none; Snapshot.Seen says which those rows hold).
	LastXid uint32

	servable bool // built on the current snapshot (generation 0 always is)
	gone     bool // its continuation expired: never served or read again
	// replacedRetain is the Retain of the generation this one replaced.
	replacedRetain time.Duration
	start          acceptor // the acceptor at the start of its log
	// bound is the byte offset in its log where the next generation's
	// base ends (-1: none yet): a reader of this log stops there and goes on
	// in the next generation's log.
	bound       int64
	tailBytes   int64
	sourceBytes int64
}

// BaseRows is how many rows the generation's base holds.
func (g *Generation) BaseRows() int64 {
	if g.Base == nil {
		return 0
	}
	return g.Base.Rows
}

// LogStart is the cursor at the start of the generation's log.
func (g *Generation) LogStart() Cursor { return Cursor{gen: g.Number, acc: g.start} }

// SourceBytes is what the generation's base replaced (0 for generation 0).
func (g *Generation) SourceBytes() int64 { return g.sourceBytes }

// Chain is a shape's generations on disk at one moment: generation 0, then
// every complete compacted generation, oldest first. Load it again to see
// newer ones; a chain a reader holds stays valid for reading while the
// generations it names are served.
type Chain struct {
	dir, handle string
	// Snapshot is the shape's current complete initial snapshot (nil: none).
	Snapshot *Snapshot
	gens     []*Generation
}

// ErrExpired means a reader asked for a generation that is no longer
// served: its offset is older than storage.compaction.retain. The HTTP API
// answers 409 (the client starts again from the current generation).
var ErrExpired = errors.New("the offset is in a compacted generation that is no longer served")

// ExpiredError says which generation of which shape expired.
type ExpiredError struct {
	Handle     string
	Generation uint64
	Why        string
}

func (e *ExpiredError) Error() string {
	return fmt.Sprintf("shape %s: generation %d is no longer served (%s): read the shape again from its current generation", e.Handle, e.Generation, e.Why)
}

// Is makes errors.Is(err, ErrExpired) true.
func (e *ExpiredError) Is(target error) bool { return target == ErrExpired }

// LoadChain reads the generations of handle under dir.
func LoadChain(dir, handle string) (*Chain, error) {
	if err := fanout.ValidateHandle(handle); err != nil {
		return nil, err
	}
	snap, err := CurrentSnapshot(dir, handle)
	if err != nil {
		return nil, err
	}
	c := &Chain{dir: dir, handle: handle, Snapshot: snap}
	g0 := &Generation{Number: 0, Base: snap, servable: true, bound: -1}
	if snap != nil {
		g0.Completed = snap.Completed
	}
	c.gens = append(c.gens, g0)
	ks, err := listGenerations(dir, handle)
	if err != nil {
		return nil, err
	}
	for _, k := range ks {
		m, ok, err := readGenManifest(dir, handle, k)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		g, err := c.generation(m)
		if err != nil {
			return nil, err
		}
		prev := c.gens[len(c.gens)-1]
		if prev.Number+1 == k {
			prev.bound = m.XOffset
		} else {
			// The generations between expired (they go oldest first):
			// generation 0, kept in the chain for its snapshot, has no
			// continuation left, so it is no longer served.
			prev.gone = true
		}
		c.gens = append(c.gens, g)
	}
	// A generation is superseded when a newer one built on the current
	// snapshot completed: that is where new readers start then.
	var next *Generation
	for i := len(c.gens) - 1; i >= 0; i-- {
		g := c.gens[i]
		if next != nil {
			g.Superseded, g.Retain = next.Completed, next.replacedRetain
		}
		if g.servable {
			next = g
		}
	}
	return c, nil
}

// generation is the Generation of manifest m.
func (c *Chain) generation(m *genManifest) (*Generation, error) {
	what := fmt.Sprintf("compacted generation %d of shape %s", m.Generation, c.handle)
	start, err := m.Acceptor.decode()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	g := &Generation{Number: m.Generation, Completed: m.Completed, LastXid: m.LastXid, start: start, bound: -1,
		tailBytes: m.TailBytes, sourceBytes: m.SourceBytes}
	if m.End != nil {
		lsn, err := pglogrepl.ParseLSN(m.End.LSN)
		if err != nil {
			return nil, fmt.Errorf("%s: end offset: %w", what, err)
		}
		g.End, g.HasEnd = OpOffset{LSN: lsn, Op: m.End.Op}, true
	}
	// The retain a generation records applies to the one it replaces.
	if m.Retain != "" {
		if g.replacedRetain, err = time.ParseDuration(m.Retain); err != nil {
			return nil, fmt.Errorf("%s: retain %q: %w", what, m.Retain, err)
		}
	}
	g.servable = c.Snapshot != nil && m.Snapshot == c.Snapshot.Generation
	g.Base = &Snapshot{Version: m.ChunkVersion, Handle: c.handle, Generation: m.Snapshot, Table: m.Table,
		Snapshot: m.Visibility, Columns: m.Columns, PrimaryKey: m.PrimaryKey, Rows: m.Rows, Bytes: m.Bytes,
		Chunks: m.Chunks, Completed: m.Completed, dir: genDir(c.dir, c.handle, m.Generation)}
	return g, nil
}

// Generations are the chain's generations, oldest first.
func (c *Chain) Generations() []*Generation { return c.gens }

// Current is the generation new readers start from: the newest one built
// on the current initial snapshot. (After a snapshot is retaken, newer
// generations built on the old one are not served: the chain then serves
// the new snapshot and reads every log from generation 0's on, until a
// compaction builds a base on the new snapshot.)
func (c *Chain) Current() *Generation {
	for i := len(c.gens) - 1; i >= 0; i-- {
		if c.gens[i].servable {
			return c.gens[i]
		}
	}
	return c.gens[0]
}

// Last is the newest generation: the writer appends to its log.
func (c *Chain) Last() *Generation { return c.gens[len(c.gens)-1] }

// Oldest is the oldest generation whose log is still on disk: a read of
// everything the shape's logs still hold starts at its LogStart (and its
// base, when it is not generation 0).
func (c *Chain) Oldest() *Generation {
	if len(c.gens) == 1 || !gen0Removed(c.dir, c.handle, c) {
		return c.gens[0]
	}
	return c.gens[1]
}

// Stale reports whether a generation newer than the chain's newest one
// completed since it was loaded: a reader that read to the end of the
// chain's logs must load it again and go on in the new log (the writer
// appends there now). One stat.
func (c *Chain) Stale() bool {
	_, err := os.Stat(filepath.Join(genDir(c.dir, c.handle, c.Last().Number+1), manifestName))
	return err == nil
}

// Generation returns generation k, or nil when the chain does not hold it.
func (c *Chain) Generation(k uint64) *Generation {
	for _, g := range c.gens {
		if g.Number == k {
			return g
		}
	}
	return nil
}

// Served reports whether g is served at now: it is current, or was
// superseded less than its Retain ago.
func (c *Chain) Served(g *Generation, now time.Time) bool {
	if !g.servable || g.gone {
		return false
	}
	if g == c.Current() {
		return true
	}
	return !g.Superseded.IsZero() && now.Before(g.Superseded.Add(g.Retain))
}

// LocateBase returns generation k for a reader of its base, or an
// *ExpiredError when it is no longer served.
func (c *Chain) LocateBase(k uint64, now time.Time) (*Generation, error) {
	g := c.Generation(k)
	if g == nil {
		return nil, &ExpiredError{Handle: c.handle, Generation: k, Why: "it was removed"}
	}
	if !c.Served(g, now) {
		return nil, &ExpiredError{Handle: c.handle, Generation: k, Why: c.expiredWhy(g)}
	}
	return g, nil
}

// LocateLog returns the generation whose log holds what follows client
// offset o (the newest whose base ends at or before o), or an
// *ExpiredError when that generation is no longer served. A read from o
// starts at that generation's LogStart, skips operations at or before o,
// and goes on through the newer generations (Read).
func (c *Chain) LocateLog(o OpOffset, now time.Time) (*Generation, error) {
	g := c.gens[0]
	for i := len(c.gens) - 1; i > 0; i-- {
		if c.gens[i].HasEnd && o.Compare(c.gens[i].End) >= 0 {
			g = c.gens[i]
			break
		}
	}
	if !c.Served(g, now) {
		return nil, &ExpiredError{Handle: c.handle, Generation: g.Number, Why: c.expiredWhy(g)}
	}
	return g, nil
}

func (c *Chain) expiredWhy(g *Generation) string {
	if g.gone {
		return "the generations after it expired"
	}
	if !g.servable {
		return "it was built on an older initial snapshot"
	}
	return fmt.Sprintf("generation %d replaced it at %s, over storage.compaction.retain (%s) ago", c.Current().Number,
		g.Superseded.UTC().Format(time.RFC3339), g.Retain)
}

// Read calls fn, in order, for every record of the shape's logs after
// from that a replay applies, as ReadLog does for one log: from's
// generation's log up to where the next generation's base ends, then each
// newer generation's log from its start, up to the readable end of the
// newest. The next cursor fn gets, and the cursor returned, are in the
// generation of the log read; a read resumed from one goes on from there,
// whatever generations appeared meanwhile. fn returning ErrStopRead ends
// the read early without error.
func (c *Chain) Read(from Cursor, fn func(e LogEntry, next Cursor) error) (Cursor, error) {
	end, _, err := c.ReadHeld(from, fn)
	return end, err
}

// ReadHeld is Read that also returns the position of the first record
// after the returned cursor that the newest log holds back (ReadLogHeld).
func (c *Chain) ReadHeld(from Cursor, fn func(e LogEntry, next Cursor) error) (Cursor, fanout.Position, error) {
	i := -1
	for j, g := range c.gens {
		if g.Number == from.gen {
			i = j
			break
		}
	}
	if i < 0 {
		return from, fanout.Position{}, &ExpiredError{Handle: c.handle, Generation: from.gen, Why: "it was removed"}
	}
	cur := from
	for ; i < len(c.gens); i++ {
		g := c.gens[i]
		if cur.gen != g.Number {
			// A reader moving on has every record up to the previous
			// generation's bound, and maybe more (it read that log before
			// the switch): the later of the two acceptor states skips them.
			cur = Cursor{gen: g.Number, acc: laterAcceptor(g.start, cur.acc)}
		}
		if g.gone {
			return cur, fanout.Position{}, &ExpiredError{Handle: c.handle, Generation: g.Number, Why: "the generations after it expired"}
		}
		if i+1 < len(c.gens) && g.bound < 0 {
			return cur, fanout.Position{}, fmt.Errorf("shape %s: generation %d is followed by generation %d, not %d: the generations between were removed (storage damaged?)",
				c.handle, g.Number, c.gens[i+1].Number, g.Number+1)
		}
		end, stopped, held, err := readLog(c.dir, c.handle, cur, g.bound, fn)
		if err != nil || stopped || i == len(c.gens)-1 {
			return end, held, err
		}
		cur = end
	}
	return cur, fanout.Position{}, nil
}

// laterAcceptor is whichever of a and b has seen the later position, with
// the higher of their epochs.
func laterAcceptor(a, b acceptor) acceptor {
	out := a
	if b.has && (!a.has || b.last.After(a.last)) {
		out = b
	}
	out.maxEpoch = max(a.maxEpoch, b.maxEpoch)
	return out
}

// logExpired reports whether the missing log of generation k is gone
// because a newer generation replaced it (and not because nothing was
// written yet).
func logExpired(dir, handle string, k uint64) (bool, error) {
	if k > 0 {
		return true, nil
	}
	path, _, err := currentLog(dir, handle)
	if err != nil {
		return false, err
	}
	return path != logPath(dir, handle), nil
}
