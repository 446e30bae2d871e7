package ingest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
)

// subqueryTables are the outer table (issues) and the subquery's (members).
const subqueryTables = `
CREATE TABLE issues (id int PRIMARY KEY, project_id int, title text);
CREATE TABLE members (id int PRIMARY KEY, user_id int, project_id int);
INSERT INTO members VALUES (1, 7, 10), (2, 8, 20);
INSERT INTO issues VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c');
`

// addSubqueryShape registers the shape "the issues of user 7's projects" as
// shapes.Add does (schemas read from Postgres) and returns it with its
// shapes-bucket revision.
func addSubqueryShape(t *testing.T, pg *testenv.Postgres, bus *fanout.Bus) (*fanout.Shape, uint64) {
	t.Helper()
	conn := pg.Connect(t)
	s, err := shapes.Add(context.Background(), bus, conn, "public.issues", "project_id IN (SELECT project_id FROM members WHERE user_id = $1)", []string{"7"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := bus.Shapes.Get(context.Background(), s.Handle)
	if err != nil {
		t.Fatal(err)
	}
	return s, e.Revision()
}

// awaitRouted waits until ingest reports routing shapes-bucket revision rev
// (a shape with subqueries is routed once their results are loaded).
func awaitRouted(t *testing.T, bus *fanout.Bus, rev uint64) {
	t.Helper()
	kv, err := shapestate.Open(context.Background(), bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "ingest to route the shape", func() bool {
		r, err := shapestate.GetRouting(context.Background(), kv)
		return err == nil && r.Revision >= rev
	})
}

// shapeChanges is every change of shape h on the bus, in order, with the
// fragments' window flags.
func shapeChanges(t *testing.T, bus *fanout.Bus, h string) (changes []fanout.Change, opened, closed int) {
	seen := map[string]bool{}
	for _, f := range streamFragments(t, bus) {
		if f.Shape != h || seen[fragmentID(f)] {
			continue
		}
		seen[fragmentID(f)] = true
		changes = append(changes, f.Changes...)
		if f.OpensWindow {
			opened++
		}
		closed += f.ClosesWindows
	}
	return changes, opened, closed
}

// startSubqueryIngest runs ingest (with a flushd stand-in that always
// flushes) on the subquery tables, and adds the shape "the issues of user
// 7's projects", routed.
func startSubqueryIngest(t *testing.T) (*testenv.Postgres, *fanout.Bus, *pgx.Conn, *fanout.Shape) {
	t.Helper()
	pg := testenv.StartPostgres(t)
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	conn := pg.Connect(t)
	pg.Exec(t, conn, subqueryTables)
	standInFlushd(t, bus, func(context.Context) bool { return true })
	runIngest(t, pg, ns)
	sh, rev := addSubqueryShape(t, pg, bus)
	awaitRouted(t, bus, rev)
	return pg, bus, conn, sh
}

// A member joining a project moves that project's issues into the shape:
// the move-in event opens a window in the member's transaction, and the
// issues read from Postgres follow, closing it; leaving is a move-out.
func TestMoveInAndOutOnTheBus(t *testing.T) {
	pg, bus, conn, sh := startSubqueryIngest(t)

	pg.Exec(t, conn, "INSERT INTO issues VALUES (4, 10, 'routed')")
	pg.Exec(t, conn, "INSERT INTO members VALUES (3, 7, 20)") // project 20 moves in: issue 2
	testenv.Eventually(t, 30*time.Second, "the move-in's rows on the bus", func() bool {
		_, _, closed := shapeChanges(t, bus, sh.Handle)
		return closed == 1
	})
	pg.Exec(t, conn, "UPDATE issues SET title = 'b2' WHERE id = 2") // after the move-in
	pg.Exec(t, conn, "DELETE FROM members WHERE id = 1")            // project 10 moves out
	testenv.Eventually(t, 30*time.Second, "the move-out on the bus", func() bool {
		ch, _, _ := shapeChanges(t, bus, sh.Handle)
		return len(ch) > 0 && ch[len(ch)-1].Op == fanout.OpMoveOut
	})
	changes, opened, closed := shapeChanges(t, bus, sh.Handle)
	var ops []string
	for _, c := range changes {
		op := string(c.Op)
		if c.MoveIn {
			op += "(move-in row " + *c.Row["id"] + ")"
		} else if c.Row != nil {
			op += "(" + *c.Row["id"] + ")"
		}
		ops = append(ops, op)
	}
	want := "insert(4) move-in insert(move-in row 2) snapshot-end update(2) move-out"
	if got := strings.Join(ops, " "); got != want {
		t.Fatalf("shape %s got\n  %s\nwant\n  %s", sh.Handle, got, want)
	}
	if opened != 1 || closed != 1 {
		t.Errorf("windows opened %d, closed %d; want 1 and 1", opened, closed)
	}
	if c := changes[0]; len(c.Tags) != 1 || len(c.Active) != 1 || !c.Active[0] {
		t.Errorf("insert without tags or active conditions: %+v", c)
	}
	if c := changes[3]; c.Snapshot == nil {
		t.Errorf("snapshot-end without its snapshot: %+v", c)
	}
}

// A row of a value whose move-in is not placed yet: its update travels as
// an insert of the whole row (its client may not hold it), and the rows
// read later still land after every transaction the read did not see.
func TestUpdateDuringAMoveInIsAWholeRow(t *testing.T) {
	pg, bus, conn, sh := startSubqueryIngest(t)

	// One transaction moves project 20 in and updates its issue: the
	// update comes after the move-in event, before the rows are read.
	pg.Exec(t, conn, "BEGIN; INSERT INTO members VALUES (3, 7, 20); UPDATE issues SET title = 'b2' WHERE id = 2; COMMIT")
	pg.Exec(t, conn, "UPDATE issues SET title = 'b3' WHERE id = 2")
	testenv.Eventually(t, 30*time.Second, "the move-in's rows on the bus", func() bool {
		_, _, closed := shapeChanges(t, bus, sh.Handle)
		return closed == 1
	})
	changes, _, _ := shapeChanges(t, bus, sh.Handle)
	var rows []string
	for _, c := range changes {
		if c.Op == fanout.OpUpdate {
			t.Fatalf("an update of a row whose move-in was not placed: %+v", c)
		}
		if c.Row != nil {
			rows = append(rows, string(c.Op)+":"+*c.Row["title"])
		}
	}
	// The last row message for issue 2 carries its final title, whatever
	// the order the read and the updates met.
	if len(rows) == 0 || !strings.HasSuffix(rows[len(rows)-1], ":b3") {
		t.Fatalf("row messages %v: the last must carry title b3", rows)
	}
}

// After ingest restarts from an earlier position (the slot's confirmed one,
// held back), with inner and outer changes made while it was down, its
// subquery results are rebuilt as they stood there, and the shape is
// replaced: the session sends again what the first run published, and the
// move-ins of those transactions would be read again at another point, a
// second history on the bus for the same shape (e2e
// TestSubqueryShapesSurviveKills checks the replacement's rows).
func TestResultsRebuiltAfterRestart(t *testing.T) {
	pg := testenv.StartPostgres(t)
	ns := testenv.StartNATS(t)
	bus := ns.Bus(t)
	conn := pg.Connect(t)
	pg.Exec(t, conn, subqueryTables)
	var paused atomic.Bool
	standInFlushd(t, bus, func(context.Context) bool { return !paused.Load() })
	stop := runIngest(t, pg, ns)
	sh, rev := addSubqueryShape(t, pg, bus)
	awaitRouted(t, bus, rev)
	paused.Store(true) // from here the slot stays where it is: the restart decodes all of it again
	pg.Exec(t, conn, "INSERT INTO members VALUES (3, 7, 20)")
	pg.Exec(t, conn, "INSERT INTO issues VALUES (4, 20, 'd')")
	pg.Exec(t, conn, "UPDATE members SET project_id = 30 WHERE id = 1") // 10 out, 30 in
	testenv.Eventually(t, 30*time.Second, "the first run to publish", func() bool {
		return published(t, bus) >= currentLSN(t, conn)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// While it is down: the member of 20 leaves, an issue moves into 30.
	pg.Exec(t, conn, "DELETE FROM members WHERE id = 3")
	pg.Exec(t, conn, "UPDATE issues SET project_id = 30 WHERE id = 2")
	pg.Exec(t, conn, "INSERT INTO members VALUES (4, 7, 40)")
	runIngest(t, pg, ns)
	paused.Store(false)
	testenv.Eventually(t, 30*time.Second, "the shape to be replaced by one of the same definition", func() bool {
		if _, err := shapes.Get(context.Background(), bus, sh.Handle); !errors.Is(err, shapes.ErrUnknownShape) {
			return false
		}
		list, err := shapes.List(context.Background(), bus)
		if err != nil {
			return false
		}
		return len(list) == 1 && list[0].Where == sh.Where && slices.Equal(list[0].Params, sh.Params)
	})
}

// A column added to a table the shape's subqueries read leaves it alone; a
// change of a column's type (Postgres rewrites the table, sending no row
// changes) removes it: its clients get 409, and the HTTP API creates it
// anew, reading the schemas again.
func TestInnerSchemaChangeRemovesTheShape(t *testing.T) {
	pg, bus, conn, sh := startSubqueryIngest(t)
	exists := func() bool {
		_, err := shapes.Get(context.Background(), bus, sh.Handle)
		return err == nil
	}

	pg.Exec(t, conn, "ALTER TABLE members ADD COLUMN role text")
	pg.Exec(t, conn, "INSERT INTO members VALUES (3, 7, 20, 'x')") // a move-in: the shape goes on
	testenv.Eventually(t, 30*time.Second, "the move-in's rows on the bus", func() bool {
		_, _, closed := shapeChanges(t, bus, sh.Handle)
		return closed == 1
	})
	if !exists() {
		t.Fatal("a column added to the subquery's table removed the shape")
	}

	pg.Exec(t, conn, "ALTER TABLE members ALTER COLUMN project_id TYPE bigint USING project_id * 10")
	pg.Exec(t, conn, "INSERT INTO members VALUES (4, 9, 300, 'y')")
	testenv.Eventually(t, 30*time.Second, "the shape removed", func() bool { return !exists() })
}
