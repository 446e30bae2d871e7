package snapshot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers/pgpool"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
	"github.com/fanout/pipeline/fanout/shapestate"
	"github.com/fanout/pipeline/fanout/testenv"
)

// BenchmarkAttempt reads one shape's snapshot into its chunk files, in
// process against a real Postgres, beside COPY of the same rows: the
// consumer's own part of BenchmarkSnapshot (deploy/bench), which a CPU
// profile of this benchmark shows alone.
func BenchmarkAttempt(b *testing.B) {
	pg := testenv.StartPostgres(b)
	conn := pg.Connect(b)
	ctx := context.Background()
	for table, rows := range map[string]int{"small": 100_000, "items": 1_000_000} {
		pg.Exec(b, conn, `CREATE TABLE `+table+` (id bigint PRIMARY KEY, owner int NOT NULL, title text)`)
		pg.Exec(b, conn, fmt.Sprintf(`INSERT INTO %s SELECT g, g %% 10, 'title ' || g FROM generate_series(1, %d) g`, table, rows))
		pg.Exec(b, conn, `VACUUM ANALYZE `+table)
	}
	schema := []fanout.Column{{Name: "id", Type: "bigint", OID: 20}, {Name: "owner", Type: "integer", OID: 23}, {Name: "title", Type: "text", OID: 25}}
	for _, c := range []struct{ name, table, where string }{
		{"all_of_100K", "small", ""},
		{"owner_of_1M", "items", "owner = 3"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var copyTime time.Duration = 1 << 62
			var want int64
			for range 3 {
				start := time.Now()
				q := "SELECT id, owner, title FROM " + c.table
				if c.where != "" {
					q += " WHERE " + c.where
				}
				tag, err := conn.PgConn().CopyTo(ctx, io.Discard, "COPY ("+q+") TO STDOUT")
				if err != nil {
					b.Fatal(err)
				}
				copyTime, want = min(copyTime, time.Since(start)), tag.RowsAffected()
			}
			pool, err := pgpool.New(pgpool.Config{URL: pg.URL, Size: 1, Settings: sessionSettings, Name: "bench", Purpose: "a snapshot"})
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			r := &Runner{cfg: configs.Snapshot{ChunkRows: 10000, ChunkBytes: 4 << 20, StatementTimeout: time.Minute}, d: Deps{Dir: b.TempDir()}, pool: pool,
				m: newMetrics(nil), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			s := &fanout.Shape{Handle: "bench", Table: "public." + c.table, Where: c.where, PrimaryKey: []string{"id"}, Schema: schema}
			pred, err := match.Compile(s.Where, s.Schema)
			if err != nil {
				b.Fatal(err)
			}
			var took time.Duration
			b.ResetTimer()
			for i := range b.N {
				j := &job{r: r, handle: s.Handle, ctx: ctx, shape: s, pred: pred, st: shapestate.State{Generation: uint64(i + 1)}, log: r.log}
				start := time.Now()
				g := &group{r: r, jobs: []*job{j}}
				blocked, err := g.attempt(ctx, g.jobs, shapestate.Routing{})
				took += time.Since(start)
				if err != nil || blocked != nil || j.err != nil || j.snap.Rows != want {
					b.Fatalf("attempt: %v, blocked %v, job %v, %v rows, want %d", err, blocked, j.err, j.snap, want)
				}
			}
			per := took / time.Duration(b.N)
			b.ReportMetric(float64(copyTime.Microseconds())/float64(per.Microseconds()), "of_COPY")
			b.ReportMetric(float64(per.Milliseconds()), "ms/snapshot")
			b.Log(fmt.Sprintf("%d rows: COPY %s, snapshot %s", want, copyTime, per))
		})
	}
}
