package e2e

import (
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
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
	s.exec(`CREATE TABLE IF NOT EXISTS ` + historyTable + ` (seq bigserial PRIMARY KEY, tbl regclass NOT NULL, op text NOT NULL, old jsonb, new jsonb)`)
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
	q := fmt.Sprintf(`SELECT h.op, %s, %s, %s, %s, %s FROM %s h WHERE h.tbl = $1::regclass ORDER BY h.seq`,
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
		var inOld, inNew []bool
		var oldKey, newKey, newRow []pgtype.Text
		if err := rows.Scan(&op, &inOld, &inNew, &oldKey, &newKey, &newRow); err != nil {
			s.t.Fatal(err)
		}
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
				want[i] = append(want[i], shapeOp{op: fanout.OpTruncate})
			case was && is && ok == nk:
				want[i] = append(want[i], shapeOp{op: fanout.OpUpdate, key: nk, vals: project()})
			case was && is:
				want[i] = append(want[i], shapeOp{op: fanout.OpDelete, key: ok}, shapeOp{op: fanout.OpInsert, key: nk, vals: project()})
			case was:
				want[i] = append(want[i], shapeOp{op: fanout.OpDelete, key: ok})
			case is:
				want[i] = append(want[i], shapeOp{op: fanout.OpInsert, key: nk, vals: project()})
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
func compareLogToHistory(storage string, d shapeDef, pk, cols []string, want []shapeOp) error {
	n := 0
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
	_, err := shapelog.ReadLog(storage, d.handle, shapelog.Cursor{}, func(e shapelog.LogEntry, _ shapelog.Cursor) error {
		f, err := e.Fragment()
		if err != nil {
			return err
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
				return fmt.Errorf("fragment %s: %w", f.Position(), err)
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
