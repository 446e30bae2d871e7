// Package bench measures the pipeline end to end against the raw ceilings
// of its two real components, measured in the same run on the same data:
// Postgres decoding the workload through pgoutput with a reader that does
// nothing, and JetStream taking the same number of messages of the same
// size by async publish. `make bench` runs it and prints one table.
package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// scale divides the workload sizes (FANOUT_BENCH_SCALE=10 runs a tenth).
func scale() int {
	if n, err := strconv.Atoi(os.Getenv("FANOUT_BENCH_SCALE")); err == nil && n > 0 {
		return n
	}
	return 1
}

type result struct {
	name    string
	changes int
	elapsed time.Duration
	note    string
}

func (r result) rate() float64 { return float64(r.changes) / r.elapsed.Seconds() }

func BenchmarkPipeline(b *testing.B) {
	div := scale()
	var rows []string
	report := func(r result, ceiling float64) {
		ratio := ""
		if ceiling > 0 {
			ratio = fmt.Sprintf("%.2f", r.rate()/ceiling)
		}
		rows = append(rows, fmt.Sprintf("| %s | %d | %.2fs | %.0f | %s | %s |", r.name, r.changes, r.elapsed.Seconds(), r.rate(), ratio, r.note))
	}

	type workload struct {
		name      string
		rows      int
		perTxn    int
		shapes    int
		payloadSz int
	}
	workloads := []workload{
		{name: "1M rows in 1,000-row transactions, 1,000 equality shapes", rows: 1_000_000 / div, perTxn: 1000, shapes: 1000},
		{name: "100K single-row transactions, 1,000 equality shapes", rows: 100_000 / div, perTxn: 1, shapes: 1000},
		{name: "200K rows in 1,000-row transactions, 10,000 equality shapes", rows: 200_000 / div, perTxn: 1000, shapes: 10_000},
	}
	for _, w := range workloads {
		pgRaw, jsRaw, e2e := runWorkload(b, w.rows, w.perTxn, w.shapes)
		ceiling := min(pgRaw.rate(), jsRaw.rate())
		report(pgRaw, 0)
		report(jsRaw, 0)
		e2e.note = fmt.Sprintf("ratio to the lower ceiling (%.0f/s)", ceiling)
		report(e2e, ceiling)
	}
	fmt.Println()
	fmt.Println("| measurement | changes | time | changes/s | ratio | note |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// runWorkload commits the workload first, then measures three readers of
// the same WAL: the raw pgoutput decode, a raw JetStream publish of as many
// messages, and the whole pipeline catching up to the end of it.
func runWorkload(b *testing.B, rows, perTxn, shapes int) (pgRaw, jsRaw, e2e result) {
	b.Helper()
	ctx := context.Background()
	pg := testenv.StartPostgres(b, testenv.WithSetting("max_wal_size", "4GB"))
	ns := testenv.StartNATS(b)
	conn := pg.Connect(b)
	pg.Exec(b, conn, `CREATE TABLE items (id bigint PRIMARY KEY, owner int NOT NULL, title text)`)
	pg.Exec(b, conn, `CREATE PUBLICATION raw FOR TABLE items`)
	pg.Exec(b, conn, `ALTER TABLE items REPLICA IDENTITY FULL`)
	pg.Exec(b, conn, `SELECT pg_create_logical_replication_slot('raw', 'pgoutput')`)

	bus := ns.Bus(b)
	if err := addEqualityShapes(ctx, bus, shapes); err != nil {
		b.Fatal(err)
	}
	// The pipeline's slot is created by ingest; start it once, so the slot
	// exists before the workload, then stop it.
	dir := b.TempDir()
	env := []string{
		"FANOUT_POSTGRES_URL=" + pg.URL, "FANOUT_NATS_URL=" + ns.URL,
		"FANOUT_STORAGE_DIR=" + filepath.Join(dir, "shapes"), "FANOUT_HTTP_ADDR=127.0.0.1:0",
		"FANOUT_LOG_LEVEL=warn", "FANOUT_FLUSHD_POLL_INTERVAL=50ms",
	}
	ingest := testenv.StartProcess(b, "ingest", "ingest", nil, env...)
	testenv.Eventually(b, time.Minute, "ingest slot", func() bool {
		var n int
		conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&n)
		return n == 1
	})
	ingest.Stop(30 * time.Second)

	for id := 0; id < rows; id += perTxn {
		n := min(perTxn, rows-id)
		if _, err := conn.Exec(ctx, `INSERT INTO items SELECT g, g % $3, 'title ' || g FROM generate_series($1::bigint, $2::bigint) g`, id, id+n-1, shapes); err != nil {
			b.Fatal(err)
		}
	}
	var endText string
	conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&endText)
	end, _ := pglogrepl.ParseLSN(endText)

	// Ceiling 1: Postgres decoding the same WAL through pgoutput.
	start := time.Now()
	decoded, err := rawDecode(ctx, pg.URL, end)
	if err != nil {
		b.Fatal(err)
	}
	pgRaw = result{name: fmt.Sprintf("ceiling: pgoutput decode (%d rows/txn)", perTxn), changes: decoded, elapsed: time.Since(start)}

	// Ceiling 2: JetStream async publish of as many messages of fragment size.
	jsRaw, err = rawPublish(ctx, ns.URL, rows, perTxn, shapes)
	if err != nil {
		b.Fatal(err)
	}

	// The pipeline: from ingest start to confirmed_flush_lsn reaching the end.
	start = time.Now()
	testenv.StartProcess(b, "flushd", "flushd", nil, env...)
	testenv.StartProcess(b, "consumer-1", "consumer", nil, append(env, "FANOUT_CONSUMER_ID=c1")...)
	testenv.StartProcess(b, "consumer-2", "consumer", nil, append(env, "FANOUT_CONSUMER_ID=c2")...)
	testenv.StartProcess(b, "ingest", "ingest", nil, env...)
	testenv.Eventually(b, 30*time.Minute, "pipeline to confirm the workload", func() bool {
		var text *string
		conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'fanout'`).Scan(&text)
		if text == nil {
			return false
		}
		lsn, _ := pglogrepl.ParseLSN(*text)
		return lsn >= end
	})
	e2e = result{name: fmt.Sprintf("pipeline: commit to persisted and confirmed (%d rows/txn, %d shapes)", perTxn, shapes), changes: rows, elapsed: time.Since(start)}
	return pgRaw, jsRaw, e2e
}

func addEqualityShapes(ctx context.Context, bus *fanout.Bus, n int) error {
	for i := 0; i < n; i++ {
		s := &fanout.Shape{
			Handle: fmt.Sprintf("bench%06d", i), Table: "public.items", Where: fmt.Sprintf("owner = %d", i),
			PrimaryKey: []string{"id"},
			Schema:     []fanout.Column{{Name: "id", Type: "bigint", OID: 20}, {Name: "owner", Type: "integer", OID: 23}, {Name: "title", Type: "text", OID: 25}},
			CreatedAt:  time.Now(),
		}
		if _, err := bus.Shapes.Put(ctx, s.Handle, s.Encode()); err != nil {
			return err
		}
	}
	return nil
}

// rawDecode reads slot "raw" to end with a pgoutput reader that does
// nothing but count row messages.
func rawDecode(ctx context.Context, url string, end pglogrepl.LSN) (int, error) {
	conn, err := pgconn.Connect(ctx, url+"&replication=database")
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	if err := pglogrepl.StartReplication(ctx, conn, "raw", 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'raw'"},
	}); err != nil {
		return 0, err
	}
	changes := 0
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return 0, err
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return 0, err
			}
			if len(x.WALData) > 0 && x.WALData[0] == 'I' {
				changes++
			}
			if x.WALStart >= end {
				return changes, nil
			}
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return 0, err
			}
			if k.ServerWALEnd >= end {
				return changes, nil
			}
			if k.ReplyRequested {
				pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: k.ServerWALEnd})
			}
		}
	}
}

// rawPublish publishes one message per fragment the pipeline would publish
// (one per shape per transaction), of a row's size times the rows it holds,
// with Nats-Msg-Id, async, into a stream configured like FANOUT.
func rawPublish(ctx context.Context, url string, rows, perTxn, shapes int) (result, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return result{}, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "RAW", Subjects: []string{"raw.>"}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute}); err != nil {
		return result{}, err
	}
	// A 1,000-row transaction over 1,000 owners touches ~1,000 shapes with
	// one row each; a 1-row transaction touches one.
	fragments := rows
	body := []byte(strings.Repeat("x", 180)) // about one encoded row change
	start := time.Now()
	for i := 0; i < fragments; i++ {
		if _, err := js.PublishAsync(fmt.Sprintf("raw.%d.bench%06d", i%64, i%shapes), body, jetstream.WithMsgID(strconv.Itoa(i))); err != nil {
			return result{}, err
		}
		if i%4096 == 4095 {
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return result{}, fmt.Errorf("raw publish did not complete")
	}
	return result{name: "ceiling: JetStream async publish (msg id, file store)", changes: fragments, elapsed: time.Since(start)}, nil
}
