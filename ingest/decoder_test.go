package ingest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/testenv"
)

// recorder is a Handler that keeps what it was given.
type recorder struct {
	begins    []Begin
	changes   []match.RowChange
	truncates [][]string
	commits   []Commit
}

func (r *recorder) Begin(_ context.Context, b Begin) error {
	r.begins = append(r.begins, b)
	return nil
}
func (r *recorder) Change(_ context.Context, c match.RowChange) error {
	r.changes = append(r.changes, c)
	return nil
}
func (r *recorder) Truncate(_ context.Context, t []string) error {
	r.truncates = append(r.truncates, t)
	return nil
}
func (r *recorder) Commit(_ context.Context, c Commit) error {
	r.commits = append(r.commits, c)
	return nil
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// decodeSlot feeds everything the slot holds, as real pgoutput protocol 1
// messages from Postgres, through a fresh decoder.
func decodeSlot(t *testing.T, conn *pgx.Conn, slot string) (*recorder, *Decoder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := conn.Query(ctx, `SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', 'dec_pub')`, slot)
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	dec := NewDecoder(quietLog())
	for _, m := range msgs {
		if err := dec.Decode(ctx, m, rec); err != nil {
			t.Fatalf("decode: %v", err)
		}
	}
	return rec, dec
}

func str(v fanout.Value) string {
	if v == nil {
		return "<NULL>"
	}
	return *v
}

func TestDecoder(t *testing.T) {
	pg := testenv.StartPostgres(t)
	conn := pg.Connect(t)
	// The slot functions decode only flushed WAL: flush at every commit.
	pg.Exec(t, conn, `SET synchronous_commit = on`)
	pg.Exec(t, conn, `CREATE PUBLICATION dec_pub FOR ALL TABLES`)
	pg.Exec(t, conn, `CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`)
	pg.Exec(t, conn, `CREATE TABLE plain (id int PRIMARY KEY, title text, body text)`)
	pg.Exec(t, conn, `ALTER TABLE docs REPLICA IDENTITY FULL`)
	// A value TOASTed out of line: random, so it does not compress inline.
	pg.Exec(t, conn, `CREATE FUNCTION big() RETURNS text LANGUAGE sql AS
		$$ SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400) $$`)

	t.Run("unchanged TOAST value is taken from the old row", func(t *testing.T) {
		pg.Exec(t, conn, `SELECT pg_create_logical_replication_slot('dec_toast', 'pgoutput')`)
		pg.Exec(t, conn, `INSERT INTO docs VALUES (1, 'a', big())`)
		var body string
		if err := conn.QueryRow(context.Background(), `SELECT body FROM docs WHERE id = 1`).Scan(&body); err != nil {
			t.Fatal(err)
		}
		pg.Exec(t, conn, `UPDATE docs SET title = 'b' WHERE id = 1`)
		rec, dec := decodeSlot(t, conn, "dec_toast")
		if len(rec.changes) != 2 || rec.changes[1].Op != fanout.OpUpdate {
			t.Fatalf("changes = %+v, want insert then update (begins %d)", rec.changes, len(rec.begins))
		}
		up := rec.changes[1]
		if up.Table != "public.docs" || str(up.New["title"]) != "b" {
			t.Fatalf("update = %+v", up)
		}
		if got := str(up.New["body"]); got != body {
			t.Fatalf("update's body has %d chars (%.20q), want the unchanged %d-char value", len(got), got, len(body))
		}
		if str(up.Old["title"]) != "a" || str(up.Old["body"]) != body || !up.OldFull {
			t.Fatalf("REPLICA IDENTITY FULL old row is not the whole old row (OldFull %v)", up.OldFull)
		}
		if dec.MissingToast != 0 {
			t.Fatalf("MissingToast = %d", dec.MissingToast)
		}
		if len(rec.begins) != 2 || len(rec.commits) != 2 || rec.begins[1].FinalLSN != rec.commits[1].CommitLSN || rec.commits[1].EndLSN <= rec.commits[1].CommitLSN {
			t.Fatalf("begin/commit LSNs do not pair: %+v %+v", rec.begins, rec.commits)
		}
	})

	t.Run("unchanged TOAST value without old row is left out, never NULL", func(t *testing.T) {
		pg.Exec(t, conn, `SELECT pg_create_logical_replication_slot('dec_plain', 'pgoutput')`)
		pg.Exec(t, conn, `INSERT INTO plain VALUES (1, 'a', big())`)
		pg.Exec(t, conn, `UPDATE plain SET title = 'b' WHERE id = 1`)
		pg.Exec(t, conn, `DELETE FROM plain WHERE id = 1`)
		pg.Exec(t, conn, `INSERT INTO plain VALUES (2, 'c', 'short')`)
		pg.Exec(t, conn, `UPDATE plain SET id = 3 WHERE id = 2`) // the old key comes as a 'K' tuple
		rec, dec := decodeSlot(t, conn, "dec_plain")
		if len(rec.changes) != 5 {
			t.Fatalf("changes = %+v", rec.changes)
		}
		for i, c := range rec.changes {
			if c.OldFull {
				t.Errorf("change %d (%s) under the default identity says its old row is whole: %+v", i, c.Op, c.Old)
			}
		}
		if kc := rec.changes[4]; len(kc.Old) != 1 || str(kc.Old["id"]) != "2" {
			t.Errorf("key change's old row %v, want the old key alone", kc.Old)
		}
		up := rec.changes[1]
		if _, present := up.New["body"]; present {
			t.Fatalf("unavailable TOAST value was emitted as %q", str(up.New["body"]))
		}
		if dec.MissingToast != 1 {
			t.Fatalf("MissingToast = %d, want 1", dec.MissingToast)
		}
		del := rec.changes[2]
		if del.Op != fanout.OpDelete || len(del.Old) != 1 || str(del.Old["id"]) != "1" {
			t.Fatalf("delete under the default identity should carry only the key, got %+v", del.Old)
		}
	})

	t.Run("REPLICA IDENTITY FULL delete carries the whole old row", func(t *testing.T) {
		pg.Exec(t, conn, `INSERT INTO docs VALUES (2, 'x', 'y')`)
		pg.Exec(t, conn, `SELECT pg_create_logical_replication_slot('dec_fulldel', 'pgoutput')`)
		pg.Exec(t, conn, `DELETE FROM docs WHERE id = 2`)
		rec, _ := decodeSlot(t, conn, "dec_fulldel")
		if len(rec.changes) != 1 {
			t.Fatalf("changes = %+v", rec.changes)
		}
		del := rec.changes[0]
		if del.Op != fanout.OpDelete || !del.OldFull || len(del.Old) != 3 || str(del.Old["title"]) != "x" || str(del.Old["body"]) != "y" {
			t.Fatalf("delete = %+v, want the whole old row with OldFull", del)
		}
	})

	t.Run("relation cache is replaced after ALTER TABLE", func(t *testing.T) {
		pg.Exec(t, conn, `CREATE TABLE evolve (id int PRIMARY KEY, a text)`)
		pg.Exec(t, conn, `SELECT pg_create_logical_replication_slot('dec_alter', 'pgoutput')`)
		pg.Exec(t, conn, `INSERT INTO evolve VALUES (1, 'x')`)
		pg.Exec(t, conn, `ALTER TABLE evolve ADD COLUMN b int, DROP COLUMN a`)
		pg.Exec(t, conn, `INSERT INTO evolve VALUES (2, 7)`)
		pg.Exec(t, conn, `TRUNCATE evolve`)
		rec, _ := decodeSlot(t, conn, "dec_alter")
		if len(rec.changes) != 2 {
			t.Fatalf("changes = %+v", rec.changes)
		}
		first, second := rec.changes[0].New, rec.changes[1].New
		if str(first["a"]) != "x" || len(first) != 2 {
			t.Fatalf("first insert = %v", first)
		}
		if _, stale := second["a"]; stale || str(second["b"]) != "7" || str(second["id"]) != "2" {
			t.Fatalf("second insert = %v, want columns id and b from the new Relation message", second)
		}
		if len(rec.truncates) != 1 || rec.truncates[0][0] != "public.evolve" {
			t.Fatalf("truncates = %v", rec.truncates)
		}
	})
}
