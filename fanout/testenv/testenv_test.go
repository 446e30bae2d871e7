package testenv

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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
	ack, err := bus.JS.Publish(ctx, fanout.Subject(3), []byte("x"), jetstream.WithMsgID("one"))
	if err != nil {
		t.Fatalf("publish to %s: %v", fanout.StreamName, err)
	}
	if ack.Stream != fanout.StreamName {
		t.Fatalf("publish landed in stream %q", ack.Stream)
	}
	dup, err := bus.JS.Publish(ctx, fanout.Subject(3), []byte("x"), jetstream.WithMsgID("one"))
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

// A cluster node stopped and started again on its ports and store rejoins,
// and an R3 stream keeps its messages and becomes current again.
func TestNATSClusterNodeRestart(t *testing.T) {
	if os.Getenv("FANOUT_CHAOS_CLUSTER") != "1" {
		t.Skip("cluster harness test: runs in `make chaos` (FANOUT_CHAOS_CLUSTER=1), which uses the cluster")
	}
	c := StartNATSCluster(t, 3)
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	c.WaitHealthy(30*time.Second, "R3")
	for i, crash := range []bool{true, false} {
		c.Stop(i, crash)
		// A publish in flight when a node goes gets no answer, and one
		// during the stream leader's election is refused: retry, as the
		// services do, under a message id so a retry is stored once.
		EventuallyErr(t, 30*time.Second, "a publish with node "+c.Nodes[i].Name+" down", func() error {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := js.Publish(pctx, "r3.x", []byte("x"), jetstream.WithMsgID(fmt.Sprint("m", i)))
			return err
		})
		c.Start(i)
		c.WaitHealthy(30*time.Second, "R3")
	}
	s, err := js.Stream(ctx, "R3")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 2 {
		t.Fatalf("stream holds %d messages after two node restarts, want 2", n)
	}
}

func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 500 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("FreePort returned port %d twice", p)
		}
		seen[p] = true
	}
}
