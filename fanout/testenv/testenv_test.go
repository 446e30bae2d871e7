package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// The harness really runs Postgres with wal_level=logical and JetStream.
func TestHarnessRunsRealPostgresAndJetStream(t *testing.T) {
	pg := StartPostgres(t)
	conn := pg.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %q, want logical", level)
	}
	var slot string
	if err := conn.QueryRow(ctx, "SELECT slot_name FROM pg_create_logical_replication_slot('harness_check', 'pgoutput')").Scan(&slot); err != nil {
		t.Fatalf("create logical slot: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'harness_check' AND slot_type = 'logical'").Scan(&n); err != nil || n != 1 {
		t.Fatalf("slot not listed in pg_replication_slots: n=%d err=%v", n, err)
	}

	ns := StartNATS(t)
	bus := ns.Bus(t)
	ack, err := bus.JS.Publish(ctx, fanout.Subject(3, "sabc"), []byte("x"), jetstream.WithMsgID("one"))
	if err != nil {
		t.Fatalf("publish to %s: %v", fanout.StreamName, err)
	}
	if ack.Stream != fanout.StreamName {
		t.Fatalf("publish landed in stream %q", ack.Stream)
	}
	dup, err := bus.JS.Publish(ctx, fanout.Subject(3, "sabc"), []byte("x"), jetstream.WithMsgID("one"))
	if err != nil || !dup.Duplicate {
		t.Fatalf("same Nats-Msg-Id was not deduplicated: %+v %v", dup, err)
	}
	info, err := bus.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 || info.Config.Retention != jetstream.WorkQueuePolicy {
		t.Fatalf("stream state %+v retention %v", info.State, info.Config.Retention)
	}
}
