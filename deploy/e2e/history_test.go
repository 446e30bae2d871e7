package e2e

import (
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/visibility"
)

// The history oracle: comparing a shape log's final rows with a SELECT
// cannot see a change applied twice, or an update lost under a later one.
// So Postgres records every change to a table (a trigger writes the old and
// new row to historyTable, in the order the changes were made), and each
// shape log's sequence of applied operations must be exactly the sequence
// that history implies for the shape's where clause: no operation missing,
// repeated or out of order, and every value as committed.
//
// The order of historyTable is commit order only while one connection
// writes the table: the tests that record history load it from one.
const historyTable = "fanout_test_history"

// recordHistory installs the history trigger on table. Call it before any
// shape of table sees a change.
func (s *stack) recordHistory(table string) {
	s.t.Helper()
	s.exec(`CREATE TABLE IF NOT EXISTS ` + historyTable + ` (seq bigserial PRIMARY KEY, tbl regclass NOT NULL, op text NOT NULL, old jsonb, new jsonb,
		xid bigint NOT NULL DEFAULT txid_current())`)
	s.exec(`CREATE OR REPLACE FUNCTION fanout_test_record() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF TG_OP = 'TRUNCATE' THEN
				INSERT INTO ` + historyTable + ` (tbl, op) VALUES (TG_RELID, 'truncate');
			ELSE
				INSERT INTO ` + historyTable + ` (tbl, op, old, new) VALUES (TG_RELID, lower(TG_OP),
					CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
			END IF;
			RETURN NULL;
		END $$`)
	s.exec(`CREATE TRIGGER fanout_test_rows AFTER INSERT OR UPDATE OR DELETE ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION fanout_test_record()`)
	s.exec(`CREATE TRIGGER fanout_test_truncate AFTER TRUNCATE ON ` + table + ` FOR EACH STATEMENT EXECUTE FUNCTION fanout_test_record()`)
	s.history = append(s.history, table)
}

// shapeOp is one operation as a shape sees it. A primary-key change is a
// delete of the old key and an insert of the new one, on both sides.
type shapeOp struct {
	op   fanout.Op
	key  string        // primary key values joined by "/"; empty for truncate
	vals []pgtype.Text // insert, update: the shape's columns, in cols order
	xid  uint32        // the transaction's id (the history's; the logs' is 32 bits)
}

func (o shapeOp) String() string {
	if o.op == fanout.OpTruncate {
		return "truncate"
	}
	return fmt.Sprintf("%s %s", o.op, o.key)
}

// checkLogsFollowHistory compares, for every shape of a table whose
// history is recorded, the log's applied operations with the history's. It
// reports each shape's first divergence and returns how many shapes differ.
// Call it after a drain, when the logs hold everything committed.
func (s *stack) checkLogsFollowHistory(defs []shapeDef) int {
	s.t.Helper()
	bad := 0
	for _, table := range s.history {
		var mine []shapeDef
		for _, d := range defs {
			if fanout.QualifiedTable(d.table) == fanout.QualifiedTable(table) {
				mine = append(mine, d)
			}
		}
		if len(mine) == 0 {
			continue
		}
		want, cols := s.historyOps(table, mine)
		pk := s.primaryKey(table)
		for i, d := range mine {
			if err := compareLogToHistory(s.storageDir(), d, pk, cols[i], want[i]); err != nil {
				bad++
				s.t.Errorf("shape %s (%s WHERE %q): its log's operations differ from what Postgres committed: %v", d.handle, d.table, d.where, err)
			}
		}
	}
	return bad
}

// historyOps is, per shape, the operations the recorded history implies,
// and the columns they carry. One pass over the history evaluates every
// shape's where clause on the old and the new row.
func (s *stack) historyOps(table string, defs []shapeDef) ([][]shapeOp, [][]string) {
	s.t.Helper()
	ctx := context.Background()
	all := s.tableColumns(table)
	pk := s.primaryKey(table)
	cols := make([][]string, len(defs))
	var wheres []string
	for i, d := range defs {
		cols[i] = all
		if len(d.columns) > 0 {
			cols[i] = d.columns
		}
		w := "true"
		if d.where != "" {
			w = "(" + d.where + ")"
		}
		wheres = append(wheres, w+" IS TRUE")
	}
	// Values longer than bigValue come as their md5 (a run's TOASTed
	// values would otherwise all be held in memory); canonical does the
	// same to the log's values.
	texts := func(names []string) string {
		var out []string
		for _, c := range names {
			v := pgx.Identifier{c}.Sanitize() + "::text"
			out = append(out, fmt.Sprintf("CASE WHEN octet_length(%[1]s) > %[2]d THEN 'md5:' || md5(%[1]s) ELSE %[1]s END", v, bigValue))
		}
		return "ARRAY[" + strings.Join(out, ", ") + "]"
	}
	// Unqualified column names in the where clauses resolve to the one
	// populated row in scope.
	rec := func(side, what string) string {
		return fmt.Sprintf("CASE WHEN h.%[1]s IS NULL THEN NULL ELSE (SELECT %[2]s FROM jsonb_populate_record(NULL::%[3]s, h.%[1]s) AS r) END", side, what, table)
	}
	matches := "ARRAY[" + strings.Join(wheres, ", ") + "]"
	q := fmt.Sprintf(`SELECT h.op, h.xid, %s, %s, %s, %s, %s FROM %s h WHERE h.tbl = $1::regclass ORDER BY h.seq`,
		rec("old", matches), rec("new", matches), rec("old", texts(pk)), rec("new", texts(pk)), rec("new", texts(all)), historyTable)
	rows, err := s.conn.Query(ctx, q, table)
	if err != nil {
		s.t.Fatalf("read the change history of %s: %v", table, err)
	}
	defer rows.Close()
	want := make([][]shapeOp, len(defs))
	index := map[string]int{}
	for i, c := range all {
		index[c] = i
	}
	for rows.Next() {
		var op string
		var xid64 int64
		var inOld, inNew []bool
		var oldKey, newKey, newRow []pgtype.Text
		if err := rows.Scan(&op, &xid64, &inOld, &inNew, &oldKey, &newKey, &newRow); err != nil {
			s.t.Fatal(err)
		}
		xid := uint32(xid64)
		for i := range defs {
			project := func() []pgtype.Text {
				v := make([]pgtype.Text, len(cols[i]))
				for j, c := range cols[i] {
					v[j] = newRow[index[c]]
				}
				return v
			}
			was, is := inOld != nil && inOld[i], inNew != nil && inNew[i]
			ok, nk := joinKey(oldKey), joinKey(newKey)
			switch {
			case op == "truncate":
				want[i] = append(want[i], shapeOp{op: fanout.OpTruncate, xid: xid})
			case was && is && ok == nk:
				want[i] = append(want[i], shapeOp{op: fanout.OpUpdate, key: nk, vals: project(), xid: xid})
			case was && is:
				want[i] = append(want[i], shapeOp{op: fanout.OpDelete, key: ok, xid: xid}, shapeOp{op: fanout.OpInsert, key: nk, vals: project(), xid: xid})
			case was:
				want[i] = append(want[i], shapeOp{op: fanout.OpDelete, key: ok, xid: xid})
			case is:
				want[i] = append(want[i], shapeOp{op: fanout.OpInsert, key: nk, vals: project(), xid: xid})
			}
		}
	}
	if err := rows.Err(); err != nil {
		s.t.Fatalf("read the change history of %s: %v", table, err)
	}
	return want, cols
}

func joinKey(vals []pgtype.Text) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = v.String
	}
	return strings.Join(parts, "/")
}

// compareLogToHistory replays the log's applied fragments (what readers
// apply: duplicates and zombie writes skipped) and compares each operation
// with want, in order. Values the log leaves out of an update (an unchanged
// TOASTed column) are not compared; every value it carries is.
//
// A shape is read from the oldest generation whose log is still on disk
// (generation 0: the initial snapshot and the first log; later ones:
// compacted, shapelog's generations). Its base must be the history's state
// after the last transaction it holds: the later of the snapshot's last
// (what it saw) and the last the compaction replayed on top of it
// (Generation.LastXid). The logs from there on must follow the rest of the
// history, skipping what the snapshot saw as readers do; every other base
// still on disk must be the history's state at its own point too.
func compareLogToHistory(storage string, d shapeDef, pk, cols []string, want []shapeOp) error {
	// Compaction goes on while the logs are compared: a generation whose
	// retention ends meanwhile is removed under the read. Read again from
	// the chain as it is then (a few times: each read takes seconds at most).
	var err error
	for range 5 {
		err = compareChainToHistory(storage, d, pk, cols, want)
		if !errors.Is(err, shapelog.ErrExpired) && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return err
}

func compareChainToHistory(storage string, d shapeDef, pk, cols []string, want []shapeOp) error {
	chain, err := shapelog.LoadChain(storage, d.handle)
	if err != nil {
		return err
	}
	start := chain.Oldest()
	seen, err := snapshotSplit(chain.Snapshot, want)
	if err != nil {
		return err
	}
	n := 0
	for _, g := range chain.Generations() {
		if g.Number < start.Number || g.Base == nil {
			continue
		}
		split, err := historySplit(want, g.LastXid)
		if err != nil {
			return fmt.Errorf("base of generation %d: %w", g.Number, err)
		}
		split = max(split, seen) // the snapshot's rows are in every base
		if err := compareBase(g.Base, pk, cols, want[:split]); err != nil {
			return fmt.Errorf("base of generation %d (after transaction %d, operation %d of %d): %w", g.Number, g.LastXid, split, len(want), err)
		}
		if g == start {
			n = split
		}
	}
	check := func(got shapeOp, row fanout.Row) error {
		if n >= len(want) {
			return fmt.Errorf("operation %d of the log is %s, but Postgres committed only %d operations for this shape (a change applied twice?)", n+1, got, len(want))
		}
		w := want[n]
		if got.op != w.op || got.key != w.key {
			return fmt.Errorf("operation %d of %d: the log has %s where Postgres committed %s (a change lost, repeated or out of order)", n+1, len(want), got, w)
		}
		for j, c := range cols {
			v, present := row[c]
			if !present || got.op == fanout.OpDelete || got.op == fanout.OpTruncate {
				continue
			}
			if (v == nil) != !w.vals[j].Valid || (v != nil && canonical(*v) != w.vals[j].String) {
				return fmt.Errorf("operation %d of %d (%s): column %s is %s in the log, %s in Postgres", n+1, len(want), got, c, showValue(v), showText(w.vals[j]))
			}
		}
		n++
		return nil
	}
	key := func(r fanout.Row) string {
		parts := make([]string, len(pk))
		for i, c := range pk {
			if r[c] != nil {
				parts[i] = *r[c]
			}
		}
		return strings.Join(parts, "/")
	}
	_, err = chain.Read(start.LogStart(), func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		f, err := e.Fragment()
		if err != nil {
			return err
		}
		if chain.Snapshot != nil && chain.Snapshot.Seen(f) {
			return nil // in the snapshot's rows, as readers skip it
		}
		for _, c := range f.Changes {
			var err error
			switch c.Op {
			case fanout.OpUpdate:
				if c.Old != nil && key(c.Old) != key(c.Row) {
					if err = check(shapeOp{op: fanout.OpDelete, key: key(c.Old)}, nil); err == nil {
						err = check(shapeOp{op: fanout.OpInsert, key: key(c.Row)}, c.Row)
					}
				} else {
					err = check(shapeOp{op: fanout.OpUpdate, key: key(c.Row)}, c.Row)
				}
			case fanout.OpDelete:
				err = check(shapeOp{op: fanout.OpDelete, key: key(c.Old)}, nil)
			case fanout.OpTruncate:
				err = check(shapeOp{op: fanout.OpTruncate}, nil)
			default:
				err = check(shapeOp{op: c.Op, key: key(c.Row)}, c.Row)
			}
			if err != nil {
				return fmt.Errorf("fragment %s (generation %d): %w", f.Position(), e.Generation(), err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if n < len(want) {
		return fmt.Errorf("the log ends after %d operations; Postgres committed %d for this shape, the next being %s (a change lost)", n, len(want), want[n])
	}
	return nil
}

// snapshotSplit is the number of want's operations the initial snapshot
// holds: those of the transactions it saw. With one writer, transactions
// commit one after another, so what a snapshot saw is a prefix of the history.
func snapshotSplit(snap *shapelog.Snapshot, want []shapeOp) (int, error) {
	if snap == nil {
		return 0, nil
	}
	split := 0
	for i, o := range want {
		if snap.Snapshot.Visible(o.xid) {
			if split < i {
				return 0, fmt.Errorf("the initial snapshot saw transaction %d (operation %d) but not the one of operation %d: the history has more than one writer", o.xid, i+1, split+1)
			}
			split = i + 1
		}
	}
	return split, nil
}

// historySplit is the number of want's operations up to and including
// the last of transaction xid (0 for none: a base holding no transaction).
func historySplit(want []shapeOp, xid uint32) (int, error) {
	if xid == 0 {
		return 0, nil
	}
	for i := len(want) - 1; i >= 0; i-- {
		if want[i].xid == xid {
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("it holds transaction %d, which committed no operation of this shape", xid)
}

// compareBase checks that a compacted base holds exactly the rows the
// operations ops leave, with every value as committed.
func compareBase(base *shapelog.Snapshot, pk, cols []string, ops []shapeOp) error {
	state := map[string][]pgtype.Text{}
	for _, o := range ops {
		switch o.op {
		case fanout.OpTruncate:
			state = map[string][]pgtype.Text{}
		case fanout.OpDelete:
			delete(state, o.key)
		default:
			state[o.key] = o.vals
		}
	}
	seen := 0
	err := base.EachRow(func(r fanout.Row) error {
		parts := make([]string, len(pk))
		for i, c := range pk {
			if r[c] != nil {
				parts[i] = *r[c]
			}
		}
		k := strings.Join(parts, "/")
		vals, ok := state[k]
		if !ok {
			return fmt.Errorf("row %s is in the base, not in the history's state", k)
		}
		for j, c := range cols {
			v := r[c]
			if (v == nil) != !vals[j].Valid || (v != nil && canonical(*v) != vals[j].String) {
				return fmt.Errorf("row %s: column %s is %s in the base, %s in Postgres", k, c, showValue(v), showText(vals[j]))
			}
		}
		seen++
		return nil
	})
	if err == nil && seen != len(state) {
		err = fmt.Errorf("the base holds %d rows, the history's state %d", seen, len(state))
	}
	return err
}

// bigValue is the length in bytes above which values are compared by md5.
const bigValue = 256

func canonical(v string) string {
	if len(v) > bigValue {
		return fmt.Sprintf("md5:%x", md5.Sum([]byte(v)))
	}
	return v
}

func showValue(v *string) string {
	if v == nil {
		return "NULL"
	}
	return fmt.Sprintf("%q", truncateText(*v, 40))
}

func showText(v pgtype.Text) string {
	if !v.Valid {
		return "NULL"
	}
	return fmt.Sprintf("%q", truncateText(v.String, 40))
}

// tableColumns are the table's columns in order.
func (s *stack) tableColumns(table string) []string {
	s.t.Helper()
	return s.names(`SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table)
}

// primaryKey is the table's primary key columns in key order.
func (s *stack) primaryKey(table string) []string {
	s.t.Helper()
	return s.names(`SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
		JOIN pg_attribute a ON a.attnum = k.attnum WHERE i.indrelid = $1::regclass AND i.indisprimary AND a.attrelid = i.indrelid ORDER BY k.n`, table)
}

func (s *stack) names(q string, args ...any) []string {
	s.t.Helper()
	rows, err := s.conn.Query(context.Background(), q, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// The log oracles can fail: a fragment lost from a transaction, and a
// change applied twice under a new position (which no position check
// sees), are both reported.
func TestLogOraclesSeeLostAndRepeatedChanges(t *testing.T) {
	dir := t.TempDir()
	st, err := shapelog.NewFileStore(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	w, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	v := func(s string) *string { return &s }
	change := func(op fanout.Op, id, owner string) fanout.Change {
		c := fanout.Change{Op: op, Row: fanout.Row{"id": v(id), "owner": v(owner)}}
		if op == fanout.OpDelete {
			c = fanout.Change{Op: op, Old: fanout.Row{"id": v(id)}}
		}
		return c
	}
	frag := func(shape string, lsn uint64, seq int, last bool, cs ...fanout.Change) *fanout.Fragment {
		return &fanout.Fragment{Version: fanout.WireVersion, Shape: shape, Xid: uint32(lsn), CommitLSN: pglogrepl.LSN(lsn),
			EndLSN: pglogrepl.LSN(lsn + 8), CommitTime: time.Now().UTC(), Seq: seq, Last: last, Changes: cs}
	}
	// "lost": transaction 200 is cut into fragments 0 and 1; fragment 1 is missing.
	// "twice": the update of transaction 300 is applied again as fragment 1.
	if _, err := w.Append(context.Background(), []*fanout.Fragment{
		frag("slost", 100, 0, true, change(fanout.OpInsert, "1", "7")),
		frag("slost", 200, 0, false, change(fanout.OpUpdate, "1", "8")),
		frag("slost", 300, 0, true, change(fanout.OpDelete, "1", "")),
		frag("stwice", 100, 0, true, change(fanout.OpInsert, "1", "7")),
		frag("stwice", 300, 0, false, change(fanout.OpUpdate, "1", "8")),
		frag("stwice", 300, 1, true, change(fanout.OpUpdate, "1", "8")),
	}); err != nil {
		t.Fatal(err)
	}
	text := func(s string) pgtype.Text { return pgtype.Text{String: s, Valid: true} }
	committed := []shapeOp{
		{op: fanout.OpInsert, key: "1", vals: []pgtype.Text{text("1"), text("7")}},
		{op: fanout.OpUpdate, key: "1", vals: []pgtype.Text{text("1"), text("8")}},
	}
	cols := []string{"id", "owner"}

	if broken, err := checkTransactions(dir, "slost"); err != nil || len(broken) != 1 {
		t.Errorf("a log missing a fragment: checkTransactions found %q (%v), want one broken transaction", broken, err)
	}
	if broken, err := checkTransactions(dir, "stwice"); err != nil || len(broken) != 0 {
		t.Errorf("a log of whole transactions: checkTransactions found %q (%v), want none", broken, err)
	}
	err = compareLogToHistory(dir, shapeDef{handle: "stwice"}, []string{"id"}, cols, committed)
	if err == nil || !strings.Contains(err.Error(), "applied twice") {
		t.Errorf("a change applied twice under a new position: %v, want it reported", err)
	}
	err = compareLogToHistory(dir, shapeDef{handle: "stwice"}, []string{"id"}, cols, append(committed, committed[1]))
	if err != nil {
		t.Errorf("the same log against a history that has the update twice: %v, want equal", err)
	}
	committed[1].vals[1] = text("9")
	err = compareLogToHistory(dir, shapeDef{handle: "slost"}, []string{"id"}, cols, append(committed[:1:1], shapeOp{op: fanout.OpDelete, key: "1"}))
	if err == nil || !strings.Contains(err.Error(), "update 1") {
		t.Errorf("a log with an update Postgres did not commit: %v, want it reported", err)
	}
}

// The history oracle checks a compacted log's bases: a base that is not
// the history's state at its point is reported, also once generation 0's
// log is gone and the check starts at the base.
func TestLogOracleChecksCompactedBases(t *testing.T) {
	dir := t.TempDir()
	st, err := shapelog.NewFileStore(dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	sw, err := shapelog.NewSnapshotWriter(dir, "scomp", 1, "public.items", []string{"id", "owner"}, []string{"id"}, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sw.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1}); err != nil {
		t.Fatal(err)
	}
	w, err := st.Take(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	v := func(s string) *string { return &s }
	frag := func(lsn uint64, c fanout.Change) *fanout.Fragment {
		return &fanout.Fragment{Version: fanout.WireVersion, Shape: "scomp", Xid: uint32(lsn), CommitLSN: pglogrepl.LSN(lsn),
			EndLSN: pglogrepl.LSN(lsn + 8), CommitTime: time.Now().UTC(), Last: true, Changes: []fanout.Change{c}}
	}
	appendFrag := func(f *fanout.Fragment) {
		if _, err := w.Append(context.Background(), []*fanout.Fragment{f}); err != nil {
			t.Fatal(err)
		}
	}
	appendFrag(frag(100, fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": v("1"), "owner": v("7")}}))
	appendFrag(frag(200, fanout.Change{Op: fanout.OpUpdate, Row: fanout.Row{"id": v("1"), "owner": v("8")}}))
	if _, err := st.Compact(context.Background(), w, "scomp", shapelog.CompactOptions{Retain: time.Hour}); err != nil {
		t.Fatal(err)
	}
	appendFrag(frag(300, fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": v("1")}}))
	text := func(s string) pgtype.Text { return pgtype.Text{String: s, Valid: true} }
	committed := func(owner string) []shapeOp {
		return []shapeOp{
			{op: fanout.OpInsert, key: "1", vals: []pgtype.Text{text("1"), text("7")}, xid: 100},
			{op: fanout.OpUpdate, key: "1", vals: []pgtype.Text{text("1"), text(owner)}, xid: 200},
			{op: fanout.OpDelete, key: "1", xid: 300},
		}
	}
	cols, d := []string{"id", "owner"}, shapeDef{handle: "scomp"}
	for _, expired := range []bool{false, true} {
		if expired {
			if err := os.Remove(filepath.Join(dir, "shapes", "scomp", "log")); err != nil {
				t.Fatal(err)
			}
		}
		if err := compareLogToHistory(dir, d, []string{"id"}, cols, committed("8")); err != nil {
			t.Errorf("generation 0 removed %v: a compacted log that follows the history: %v", expired, err)
		}
		err := compareLogToHistory(dir, d, []string{"id"}, cols, committed("9"))
		if err == nil || !strings.Contains(err.Error(), "base of generation 1") {
			t.Errorf("generation 0 removed %v: a base holding a value Postgres did not commit: %v, want it reported", expired, err)
		}
	}
}
