package bench

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"
)

// BenchmarkSubqueryMoveIn: a shape "the issues of the projects user 1 is a
// member of" (project_id IN (SELECT project_id FROM members WHERE user_id
// = $1)) followed by a live client through the HTTP API, as Electric's
// clients follow it. Each round commits one row to members that moves a
// project's 1,000 issues into the shape (a move-in: ingest reads them in a
// snapshot and places them in the log), and times the commit to the client
// holding all 1,000 rows; then the membership is deleted (a move-out) and
// the client is read to the end before the next round. The reference is
// the same 1,000 rows inserted into a project the user is already a member
// of: the same rows reaching the client as plain changes.
func BenchmarkSubqueryMoveIn(b *testing.B) {
	const perProject, rounds = 1000, 5
	p, base := newAPIPipe(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p.pg.Exec(b, p.conn, `CREATE TABLE members (id int PRIMARY KEY, user_id int NOT NULL, project_id int NOT NULL)`)
	p.pg.Exec(b, p.conn, `CREATE TABLE issues (id int PRIMARY KEY, project_id int NOT NULL, title text)`)
	p.pg.Exec(b, p.conn, fmt.Sprintf(`INSERT INTO issues SELECT g, g / %d, 'issue ' || g FROM generate_series(0, %d) g`, perProject, rounds*perProject-1))
	p.pg.Exec(b, p.conn, `INSERT INTO members VALUES (1000000, 1, 1000000)`) // the reference project, empty for now
	def := url.Values{"table": {"issues"}, "where": {"project_id IN (SELECT project_id FROM members WHERE user_id = $1)"}, "params[1]": {"1"}}
	client := &http.Client{}
	handle, offset, msgs, err := syncShape(ctx, client, base, def)
	if err != nil {
		b.Fatal(err)
	}
	if msgs != 0 {
		b.Fatalf("the shape starts with %d rows, want 0", msgs)
	}
	// follow reads the shape live from offset until want rows arrived
	// (counted by their inserts, move-in rows included), or the deadline.
	follow := func(want int) (time.Duration, error) {
		start := time.Now()
		got := 0
		for got < want {
			q := url.Values{}
			for k, v := range def {
				q[k] = v
			}
			q.Set("handle", handle)
			q.Set("offset", offset)
			q.Set("live", "true")
			r, err := getShape(ctx, client, base, q)
			if err != nil {
				return 0, err
			}
			if r.status != http.StatusOK {
				return 0, fmt.Errorf("live read of the subquery shape: %d %s", r.status, r.body)
			}
			got += bytes.Count(r.body, []byte(`"operation":"insert"`))
			offset = r.offset
		}
		return time.Since(start), nil
	}
	// drain reads the shape to its end (after a move-out).
	drain := func() {
		for {
			q := url.Values{}
			for k, v := range def {
				q[k] = v
			}
			q.Set("handle", handle)
			q.Set("offset", offset)
			r, err := getShape(ctx, client, base, q)
			if err != nil || r.status != http.StatusOK {
				b.Fatalf("read to the end: %v %d %s", err, r.status, r.body)
			}
			offset = r.offset
			if r.upToDate {
				return
			}
		}
	}
	var moveIn, plain []time.Duration
	for round := range rounds {
		type result struct {
			d   time.Duration
			err error
		}
		done := make(chan result, 1)
		go func() { d, err := follow(perProject); done <- result{d, err} }()
		time.Sleep(100 * time.Millisecond) // the live request is held
		t0 := time.Now()
		p.pg.Exec(b, p.conn, fmt.Sprintf(`INSERT INTO members VALUES (%d, 1, %d)`, round, round))
		res := <-done
		if res.err != nil {
			b.Fatal(res.err)
		}
		moveIn = append(moveIn, time.Since(t0))
		p.pg.Exec(b, p.conn, fmt.Sprintf(`DELETE FROM members WHERE id = %d`, round))
		drain()

		// The reference: the same number of rows as plain inserts.
		go func() { d, err := follow(perProject); done <- result{d, err} }()
		time.Sleep(100 * time.Millisecond)
		t0 = time.Now()
		p.pg.Exec(b, p.conn, fmt.Sprintf(`INSERT INTO issues SELECT g, 1000000, 'plain ' || g FROM generate_series(%d, %d) g`,
			(100+round)*perProject, (100+round)*perProject+perProject-1))
		if res = <-done; res.err != nil {
			b.Fatal(res.err)
		}
		plain = append(plain, time.Since(t0))
	}
	slices.Sort(moveIn)
	slices.Sort(plain)
	med := func(d []time.Duration) time.Duration { return d[len(d)/2] }
	addRow("subqueries: a commit that moves 1,000 rows in, to the client holding them", fmt.Sprintf("%s median", med(moveIn).Round(time.Millisecond)),
		fmt.Sprintf("%.2f", med(plain).Seconds()/med(moveIn).Seconds()),
		fmt.Sprintf("%d rounds (each: a membership row moves a project's %d issues in, then out); min %s, max %s; the ratio is to the same %d rows inserted into a project the user is a member of (median %s), a live HTTP client following the shape",
			rounds, perProject, moveIn[0].Round(time.Millisecond), moveIn[len(moveIn)-1].Round(time.Millisecond), perProject, med(plain).Round(time.Millisecond)))
}
