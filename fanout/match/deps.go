package match

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// Dependencies: the registry keeps the current result of every subquery its
// shapes read, from the same stream of changes it routes, in commit order.
// A change to a subquery's table updates its result first; the values that
// enter or leave it become the move events of the shapes that read it
// (depmoves.go), and the changes of their own tables that follow are
// routed with the new result. So a change and a move are decided at the
// same point of the stream, never from a state that lags it.
//
// A result is loaded from Postgres once (ingest's loader, in a snapshot that
// sees exactly a prefix of the commit order) and then kept from the stream:
//
//	loading     the query runs; the stream's changes to its table are kept,
//	            the latest per row, with their transaction
//	catching up loaded: the kept changes of transactions the snapshot did
//	            not see are applied; from then on, changes of transactions
//	            the snapshot saw are skipped (its rows hold them), the others
//	            applied, until the stream passes the snapshot (a transaction
//	            it did not see, or the WAL position read with it)
//	ready       every change is applied; shapes reading it are routed
//
// A subquery whose WHERE has subqueries (nesting) keeps every row of its
// table (the columns it reads), so that when a value enters or leaves a
// nested result, the rows it decides are evaluated again. A plain one keeps
// only its rows that match, as row key -> tuple: memory in proportion to
// the result.

type depStatus uint8

const (
	depLoading depStatus = iota
	depCatchingUp
	depReady
)

// depState is one subquery's result and what keeping it needs.
type depState struct {
	sub    *Subquery
	result *Result
	// members maps the key of each row counted in the result to its tuple.
	members map[string]string
	// nested only: every row of the table (the needed columns), and for
	// each child subquery, the rows by their left tuple for that child.
	rows     map[string]fanout.Row
	byChild  []map[string]map[string]struct{}
	children []*depState
	parents  []*depState
	level    int // 0 without nesting, else 1 + the highest child level

	shapes  []*entry // shapes whose clause reads it directly
	indexed []*entry // shapes indexed by its values (a top-level col IN (it))
	refs    int      // shapes and parents using it

	owner   *Registry
	dropped bool // no longer kept (a Subquery may still point at it)
	status  depStatus
	buffer  map[string]bufferedRow // loading: each row's latest change since the load was asked
	snap    visibility.Snapshot    // catching up: the snapshot it was loaded at
	walLSN  uint64                 // catching up: the WAL position read with the snapshot
	needed  []string               // columns a row needs: key, selected, the WHERE's
}

type bufferedRow struct {
	xid uint32
	row fanout.Row // nil: deleted
}

// nested reports whether the subquery's WHERE reads subqueries of its own.
func (d *depState) nested() bool { return len(d.children) > 0 }

// LoadRequest asks for the rows of subqueries, read in one snapshot: each
// subquery's table rows its result is made of (LoadSQL). Subqueries are
// listed children first.
type LoadRequest struct {
	Subqueries []*Subquery
}

// DepLoad is what the loader read for a LoadRequest: the rows of each
// subquery (by ID), the snapshot they were read at, which must see exactly
// the transactions that committed before some point of the commit order
// (no committed transaction left in progress), and the WAL insert position
// read right after it: every transaction the snapshot saw commits below it.
type DepLoad struct {
	Subqueries []*Subquery
	Rows       map[string][]fanout.Row
	Snapshot   visibility.Snapshot
	WalLSN     uint64
}

// LoadSQL is the query that reads the rows s's result is made of, in the
// columns the registry needs (Needed): the rows its WHERE matches, or every
// row of its table when the WHERE has subqueries (its result is then kept
// from all its rows).
func (s *Subquery) LoadSQL() string {
	cols := make([]string, 0, len(s.Needed()))
	for _, c := range s.Needed() {
		cols = append(cols, quoteIdent(c))
	}
	schema, name := fanout.SplitTable(s.Table)
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + quoteIdent(schema) + "." + quoteIdent(name)
	if s.WhereSQL != "" && (s.Where == nil || !s.Where.HasSubqueries()) {
		q += " WHERE " + s.WhereSQL
	}
	return q
}

// Needed lists the columns of s's table the registry keeps or reads: the
// primary key, the selected columns and those its WHERE reads.
func (s *Subquery) Needed() []string {
	var out []string
	add := func(c string) {
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	for _, c := range s.PrimaryKey {
		add(c)
	}
	for _, c := range s.Columns {
		add(c)
	}
	if s.Where != nil {
		for _, c := range s.Where.Columns() {
			add(c)
		}
	}
	return out
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// Result implements Results: the result of s when it is loaded.
func (r *Registry) Result(s *Subquery) *Result {
	d := s.dep
	if d == nil || d.owner != r || d.dropped {
		if d = r.deps[s.ID]; d == nil {
			return nil
		}
		s.dep = d
	}
	if d.status == depLoading {
		return nil
	}
	return d.result
}

// addDep returns the state of s, creating it (loading) with its nested
// subqueries when new, and counts one more user.
func (r *Registry) addDep(s *Subquery) *depState {
	if d := r.deps[s.ID]; d != nil {
		d.refs++
		return d
	}
	d := &depState{sub: s, result: NewResult(s), members: map[string]string{}, buffer: map[string]bufferedRow{}, refs: 1, needed: s.Needed(), owner: r}
	if s.Where != nil {
		for _, cs := range s.Where.Subqueries() {
			c := r.addDep(cs)
			c.parents = append(c.parents, d)
			d.children = append(d.children, c)
			d.level = max(d.level, c.level+1)
		}
	}
	if d.nested() {
		d.rows = map[string]fanout.Row{}
		d.byChild = make([]map[string]map[string]struct{}, len(d.children))
		for i := range d.byChild {
			d.byChild[i] = map[string]map[string]struct{}{}
		}
	}
	r.deps[s.ID] = d
	ts := append(r.depTables[s.Table], d)
	for i := len(ts) - 1; i > 0 && ts[i-1].level > d.level; i-- { // children first
		ts[i-1], ts[i] = ts[i], ts[i-1]
	}
	r.depTables[s.Table] = ts
	r.loads = append(r.loads, d)
	return d
}

// dropDep counts one user less and forgets d (and its children's use by
// it) when none is left.
func (r *Registry) dropDep(d *depState) {
	if d.refs--; d.refs > 0 {
		return
	}
	d.dropped = true
	delete(r.deps, d.sub.ID)
	ts := r.depTables[d.sub.Table]
	if i := slices.Index(ts, d); i >= 0 {
		ts = slices.Delete(ts, i, i+1)
	}
	if len(ts) == 0 {
		delete(r.depTables, d.sub.Table)
	} else {
		r.depTables[d.sub.Table] = ts
	}
	for _, c := range d.children {
		if i := slices.Index(c.parents, d); i >= 0 {
			c.parents = slices.Delete(c.parents, i, i+1)
		}
		r.dropDep(c)
	}
	if i := slices.Index(r.loads, d); i >= 0 {
		r.loads = slices.Delete(r.loads, i, i+1)
	}
}

// ready reports whether d and its nested subqueries are ready.
func (d *depState) ready() bool {
	if d.status != depReady {
		return false
	}
	for _, c := range d.children {
		if !c.ready() {
			return false
		}
	}
	return true
}

// TakeLoads returns the subqueries whose results must be loaded, grouped so
// that each group is read in one snapshot (a subquery with its nested
// ones), and forgets them. The caller must answer each with Loaded or
// LoadFailed.
func (r *Registry) TakeLoads() []LoadRequest {
	if len(r.loads) == 0 {
		return nil
	}
	slices.SortStableFunc(r.loads, func(a, b *depState) int { return a.level - b.level })
	req := LoadRequest{}
	for _, d := range r.loads {
		req.Subqueries = append(req.Subqueries, d.sub)
	}
	r.loads = r.loads[:0]
	return []LoadRequest{req}
}

// ReloadAll starts over every result (ingest's replication session starts
// again from the slot, behind where the results stand): each is loaded
// again and rewound to the session's start (LoadedAt). Until then the
// shapes reading them wait: they are taken out of the index, and what they
// had pending is forgotten (the stream brings those moves again).
func (r *Registry) ReloadAll() LoadRequest {
	var ds []*depState
	for _, d := range r.deps {
		d.status = depLoading
		d.buffer = nil // the load is rewound, not caught up
		ds = append(ds, d)
	}
	for h, e := range r.shapes {
		if len(e.deps) == 0 {
			continue
		}
		e.pending, e.moves = nil, nil
		r.unroute(e)
		r.waiting[h] = e
	}
	r.moveIns, r.readyNow = nil, nil
	slices.SortStableFunc(ds, func(a, b *depState) int { return a.level - b.level })
	req := LoadRequest{}
	for _, d := range ds {
		req.Subqueries = append(req.Subqueries, d.sub)
	}
	r.loads = r.loads[:0]
	return req
}

// SubqueryTableKeys maps each table a subquery reads to its primary key.
func (r *Registry) SubqueryTableKeys() map[string][]string {
	out := map[string][]string{}
	for t, ds := range r.depTables {
		if len(ds) > 0 {
			out[t] = ds[0].sub.PrimaryKey
		}
	}
	return out
}

// HasSubqueries reports whether any shape reads a subquery.
func (r *Registry) HasSubqueries() bool { return len(r.deps) > 0 }

// RewindRow is a row of a subquery's table as it was at an earlier point
// of the stream: Old, or none (nil: it did not exist), keyed by Key.
type RewindRow struct {
	Table string
	Key   fanout.Row
	Old   fanout.Row
}

// LoadedAt sets the results of a ReloadAll from the rows read and rewinds
// them, from the load's snapshot, to an earlier point of the stream: rows
// are each row's state at that point where a transaction the snapshot saw
// changed it since (its state before the first such change). The results
// are then ready at that point: the stream is routed from there.
func (r *Registry) LoadedAt(l DepLoad, rows []RewindRow) {
	byTable := map[string][]RewindRow{}
	for _, rw := range rows {
		byTable[rw.Table] = append(byTable[rw.Table], rw)
	}
	for _, s := range l.Subqueries { // children first
		d := r.deps[s.ID]
		if d == nil || d.status != depLoading {
			continue
		}
		r.fill(d, l.Rows[s.ID])
		for _, rw := range byTable[d.sub.Table] {
			key, ok := rowKey(d.sub.PrimaryKey, rw.Key)
			if !ok {
				continue
			}
			var old fanout.Row
			if rw.Old != nil {
				old = project(rw.Old, d.needed)
			}
			r.setKey(d, key, old) // counted only if its WHERE matches it
		}
		if d.nested() {
			// Its children were rewound: evaluate its rows again.
			for key, row := range d.rows {
				r.setKey(d, key, row)
			}
		}
		d.buffer, d.status = nil, depReady
	}
	r.checkWaiting()
}

// fill starts d's result again from the rows a load read.
func (r *Registry) fill(d *depState, rows []fanout.Row) {
	d.result = NewResult(d.sub)
	d.members = map[string]string{}
	if d.nested() {
		d.rows = map[string]fanout.Row{}
		for i := range d.byChild {
			d.byChild[i] = map[string]map[string]struct{}{}
		}
	}
	for _, row := range rows {
		r.setRow(d, row)
	}
}

// Loaded sets the results of a load: from the rows read, plus the changes
// kept meanwhile of transactions the snapshot did not see. The results
// then catch up (see the package comment at the top of this file).
func (r *Registry) Loaded(l DepLoad) {
	for _, s := range l.Subqueries { // children first
		d := r.deps[s.ID]
		if d == nil || d.status != depLoading {
			continue // removed meanwhile, or loaded by another request
		}
		r.fill(d, l.Rows[s.ID])
		for key, b := range d.buffer {
			if !l.Snapshot.Visible(b.xid) {
				r.setKey(d, key, b.row)
			}
		}
		d.buffer = nil
		d.status, d.snap, d.walLSN = depCatchingUp, l.Snapshot, l.WalLSN
	}
	r.checkWaiting()
}

// LoadFailed gives up loading subs: the shapes waiting on them are not
// routed (err says why, through the registry's error handler), and are
// removed from the registry.
func (r *Registry) LoadFailed(subs []*Subquery, err error) {
	failed := map[*depState]bool{}
	for _, s := range subs {
		if d := r.deps[s.ID]; d != nil && d.status == depLoading {
			failed[d] = true
		}
	}
	for h, e := range r.waiting {
		for _, d := range e.deps {
			if dependsOnAny(d, failed) {
				r.onErr(e.shape, fmt.Errorf("the results of its subqueries could not be loaded, so it is not routed: %w", err))
				r.Remove(h)
				break
			}
		}
	}
}

func dependsOnAny(d *depState, set map[*depState]bool) bool {
	if set[d] {
		return true
	}
	for _, c := range d.children {
		if dependsOnAny(c, set) {
			return true
		}
	}
	return false
}

// BeginTxn tells the registry which transaction the next changes belong
// to: its xid and commit LSN. A result catching up is ready once a
// transaction its snapshot did not see begins, or the stream reaches the
// WAL position read with the snapshot.
func (r *Registry) BeginTxn(xid uint32, commitLSN uint64) {
	r.curXid, r.curLSN = xid, commitLSN
	changed := false
	for _, d := range r.deps {
		if d.status == depCatchingUp && (commitLSN >= d.walLSN || !d.snap.Visible(xid)) {
			d.status, changed = depReady, true
		}
	}
	if changed {
		r.checkWaiting()
	}
}

// Idle tells the registry the stream has passed walEnd with no transaction
// open (a keepalive): results loaded below it are ready.
func (r *Registry) Idle(walEnd uint64) {
	changed := false
	for _, d := range r.deps {
		if d.status == depCatchingUp && walEnd >= d.walLSN {
			d.status, changed = depReady, true
		}
	}
	if changed {
		r.checkWaiting()
	}
}

// Waiting is the number of shapes waiting for their subqueries' results.
func (r *Registry) Waiting() int { return len(r.waiting) }

// IsWaiting reports whether shape handle waits for its subqueries' results.
func (r *Registry) IsWaiting(handle string) bool { return r.waiting[handle] != nil }

// TakeReady returns the shapes that started being routed since the last
// call (their subqueries' results became ready).
func (r *Registry) TakeReady() []string {
	out := r.readyNow
	r.readyNow = nil
	return out
}

// checkWaiting routes the waiting shapes whose results are all ready.
func (r *Registry) checkWaiting() {
	for h, e := range r.waiting {
		ok := true
		for _, d := range e.deps {
			ok = ok && d.ready()
		}
		if !ok {
			continue
		}
		delete(r.waiting, h)
		r.route(e)
		r.readyNow = append(r.readyNow, h)
	}
}

// routeDeps applies a change of a subquery's table to every result kept
// from that table, children before parents, and turns what enters or
// leaves them into moves of the shapes reading them.
func (r *Registry) routeDeps(ds []*depState, c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	for _, d := range ds {
		switch d.status {
		case depLoading:
			r.bufferChange(d, c)
		case depCatchingUp:
			if d.snap.Visible(r.curXid) {
				continue // the snapshot's rows hold it
			}
			r.applyChange(d, c, emit)
		case depReady:
			r.applyChange(d, c, emit)
		}
	}
}

// bufferChange keeps c as the latest change of its row(s) while d loads.
func (r *Registry) bufferChange(d *depState, c RowChange) {
	pk := d.sub.PrimaryKey
	newRow := withUnchanged(c.New, c.Old)
	if c.Old != nil {
		if ok, has := rowKey(pk, c.Old); has && (newRow == nil || !sameKey(pk, c.Old, newRow)) {
			d.buffer[ok] = bufferedRow{xid: r.curXid}
		}
	}
	if newRow != nil {
		if nk, has := rowKey(pk, newRow); has {
			d.buffer[nk] = bufferedRow{xid: r.curXid, row: project(newRow, d.needed)}
		}
	}
}

// applyChange applies c to d and moves what entered or left d's result.
func (r *Registry) applyChange(d *depState, c RowChange, emit func(s *fanout.Shape, ch fanout.Change)) {
	pk := d.sub.PrimaryKey
	var oldKey string
	hasOld := false
	if c.Old != nil {
		oldKey, hasOld = rowKey(pk, c.Old)
	}
	var newRow fanout.Row
	newKey := ""
	if c.New != nil {
		newRow = withUnchanged(c.New, c.Old)
		var ok bool
		if newKey, ok = rowKey(pk, newRow); !ok {
			r.brokenDep(d, fmt.Errorf("a change of %s has no primary key value", d.sub.Table))
			return
		}
		if !hasOld {
			oldKey, hasOld = newKey, true // the key did not change
		}
		newRow = r.completeRow(d, oldKey, newRow)
		if newRow == nil {
			return
		}
	}
	var moves depMoves
	if hasOld && oldKey != newKey {
		r.setKeyMoves(d, oldKey, nil, &moves)
	}
	if newRow != nil {
		r.setKeyMoves(d, newKey, project(newRow, d.needed), &moves)
	}
	r.propagate(d, moves, emit)
}

// completeRow fills the columns d needs that an update left out (unchanged
// TOASTed values the decoder could not supply) from the row d keeps; nil
// when a needed column is still missing (the dependents are rotated).
func (r *Registry) completeRow(d *depState, oldKey string, row fanout.Row) fanout.Row {
	var missing []string
	for _, c := range d.needed {
		if _, ok := row[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return row
	}
	if d.nested() {
		if kept := d.rows[oldKey]; kept != nil {
			filled := make(fanout.Row, len(row)+len(missing))
			for k, v := range row {
				filled[k] = v
			}
			for _, c := range missing {
				filled[c] = kept[c]
			}
			return filled
		}
	}
	r.brokenDep(d, fmt.Errorf("an update of %s left out column(s) %s (unchanged TOASTed values): set REPLICA IDENTITY FULL on %s (ingest does when postgres.replica_identity_full is true)",
		d.sub.Table, strings.Join(missing, ", "), d.sub.Table))
	return nil
}

// depMoves are the tuples that entered or left a result.
type depMoves struct {
	entered, left []string
}

func (m *depMoves) empty() bool { return len(m.entered) == 0 && len(m.left) == 0 }

// setRow sets a row read by a load (no moves: nothing reads d yet).
func (r *Registry) setRow(d *depState, row fanout.Row) {
	key, ok := rowKey(d.sub.PrimaryKey, row)
	if !ok {
		return
	}
	r.setKey(d, key, row)
}

// setKey sets the row of key (nil: none) without moving anything.
func (r *Registry) setKey(d *depState, key string, row fanout.Row) {
	var m depMoves
	r.setKeyMoves(d, key, row, &m)
}

// setKeyMoves sets the row of key (nil: none) in d and records in m the
// tuples that entered or left d's result.
func (r *Registry) setKeyMoves(d *depState, key string, row fanout.Row, m *depMoves) {
	if d.nested() {
		if old := d.rows[key]; old != nil {
			r.indexChildren(d, key, old, false)
		}
		if row == nil {
			delete(d.rows, key)
		} else {
			d.rows[key] = row
			r.indexChildren(d, key, row, true)
		}
	}
	was, isWas := d.members[key]
	now, isNow := "", false
	if row != nil {
		isNow = r.depMatches(d, row)
		if isNow {
			var err error
			if now, err = d.sub.RowTuple(row); err != nil {
				r.onDepErr(d, err)
			}
		}
	}
	switch {
	case isWas && isNow && was == now:
		return
	case isWas:
		delete(d.members, key)
		if d.result.Remove(was) {
			m.left = append(m.left, was)
		}
	}
	if isNow {
		d.members[key] = now
		if d.result.Add(now) {
			m.entered = append(m.entered, now)
		}
	}
	m.net()
}

// net cancels a tuple that both left and entered (a row replaced by another
// giving the same value).
func (m *depMoves) net() {
	for i := 0; i < len(m.entered); i++ {
		if j := slices.Index(m.left, m.entered[i]); j >= 0 {
			m.left = slices.Delete(m.left, j, j+1)
			m.entered = slices.Delete(m.entered, i, i+1)
			i--
		}
	}
}

// depMatches evaluates d's WHERE on row with the current results.
func (r *Registry) depMatches(d *depState, row fanout.Row) bool {
	if d.sub.Where == nil {
		return true
	}
	ok, err := d.sub.Where.EvalWith(row, r)
	if err != nil {
		r.onDepErr(d, err)
	}
	return ok
}

// indexChildren adds (or removes) row, of key, to the rows d keeps by
// their left tuple for each child.
func (r *Registry) indexChildren(d *depState, key string, row fanout.Row, add bool) {
	for i, c := range d.children {
		t, _, _ := c.sub.LeftTuple(row)
		set := d.byChild[i][t]
		if add {
			if set == nil {
				set = map[string]struct{}{}
				d.byChild[i][t] = set
			}
			set[key] = struct{}{}
		} else if set != nil {
			delete(set, key)
			if len(set) == 0 {
				delete(d.byChild[i], t)
			}
		}
	}
}

// propagate hands the tuples that entered or left d's result on: to the
// shapes reading d (moves, index), and to the results whose WHERE reads d,
// whose rows with those values are evaluated again.
func (r *Registry) propagate(d *depState, m depMoves, emit func(s *fanout.Shape, ch fanout.Change)) {
	if m.empty() {
		return
	}
	r.moveShapes(d, m, emit)
	for _, p := range d.parents {
		if p.status == depLoading {
			continue // its load evaluates its rows with d's result then
		}
		ci := slices.Index(p.children, d)
		var pm depMoves
		for _, t := range append(append([]string(nil), m.entered...), m.left...) {
			for key := range p.byChild[ci][t] {
				r.setKeyMoves(p, key, p.rows[key], &pm)
			}
		}
		r.propagate(p, pm, emit)
	}
}

// brokenDep stops keeping d (its rows cannot be followed any more) and
// rotates the shapes that read it.
func (r *Registry) brokenDep(d *depState, err error) {
	for _, e := range r.dependents(d) {
		r.rotate(e.shape.Handle, err.Error())
	}
}

// dependents lists the shapes that read d, directly or through nesting.
func (r *Registry) dependents(d *depState) []*entry {
	seen := map[*entry]bool{}
	var out []*entry
	var walk func(d *depState)
	walk = func(d *depState) {
		for _, e := range d.shapes {
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
		for _, p := range d.parents {
			walk(p)
		}
	}
	walk(d)
	for _, e := range r.waiting {
		for _, x := range e.deps {
			if dependsOnAny(x, map[*depState]bool{d: true}) && !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	return out
}

func (r *Registry) onDepErr(d *depState, err error) {
	for _, e := range d.shapes {
		r.onErr(e.shape, fmt.Errorf("subquery %s: %w", d.sub.SQL, err))
		return
	}
}

// Rotation is a shape the registry can no longer keep exact: it must be
// removed and created again (clients get 409 and refetch).
type Rotation struct {
	Handle string
	Reason string
	// Remove: the shape is removed, not replaced by one of the same
	// definition (its tables' schemas changed: a new shape must read them
	// again, and its where clause may no longer be valid). Clients get 409,
	// and the HTTP API creates the shape anew from its definition.
	Remove bool
}

// TakeRotations returns the shapes to rotate since the last call.
func (r *Registry) TakeRotations() []Rotation {
	out := r.rotations
	r.rotations = nil
	return out
}

func (r *Registry) rotate(handle, reason string) {
	for _, x := range r.rotations {
		if x.Handle == handle {
			return
		}
	}
	r.rotations = append(r.rotations, Rotation{Handle: handle, Reason: reason})
}

// TablesRead reports whether any shape reads table through a subquery.
func (r *Registry) TablesRead(table string) bool { return len(r.depTables[table]) > 0 }

// DependentsOf lists the shapes that read table through subqueries.
func (r *Registry) DependentsOf(table string) []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range r.depTables[table] {
		for _, e := range r.dependents(d) {
			if !seen[e.shape.Handle] {
				seen[e.shape.Handle] = true
				out = append(out, e.shape.Handle)
			}
		}
	}
	sort.Strings(out)
	return out
}

// rowKey encodes row's primary key; ok is false when a key column is
// missing or NULL.
func rowKey(pk []string, row fanout.Row) (string, bool) {
	if len(pk) == 1 {
		v := row[pk[0]]
		if v == nil {
			return "", false
		}
		return *v, true
	}
	var b strings.Builder
	for _, c := range pk {
		v := row[c]
		if v == nil {
			return "", false
		}
		b.WriteString(strconv.Itoa(len(*v)))
		b.WriteByte(':')
		b.WriteString(*v)
	}
	return b.String(), true
}

func sameKey(pk []string, a, b fanout.Row) bool {
	ka, oka := rowKey(pk, a)
	kb, okb := rowKey(pk, b)
	return oka && okb && ka == kb
}

// project keeps cols of row (a copy).
func project(row fanout.Row, cols []string) fanout.Row {
	out := make(fanout.Row, len(cols))
	for _, c := range cols {
		if v, ok := row[c]; ok {
			out[c] = v
		}
	}
	return out
}
