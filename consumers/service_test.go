package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/configs"
	"github.com/fanout/pipeline/consumers/shapelog"
	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

const testPartitions = 4

// env is one embedded NATS, the bus, and a storage directory shared by the
// consumers of a test; the test itself plays flushd and ingest.
type env struct {
	t   *testing.T
	ns  *testenv.NATS
	bus *fanout.Bus
	dir string
}

func newEnv(t *testing.T) *env {
	ns := testenv.StartNATS(t)
	return &env{t: t, ns: ns, bus: ns.Bus(t), dir: t.TempDir()}
}

func (e *env) config(id string) Config {
	e.t.Helper()
	var cfg Config
	err := configs.Load("consumer", []string{
		"--consumer.id", id, "--nats.url", e.ns.URL, "--storage.dir", e.dir, "--http.addr", "",
		"--consumer.heartbeat_interval", "100ms", "--bus.partitions", fmt.Sprint(testPartitions),
		"--consumer.batch", "16", "--log.level", "debug",
	}, &cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return cfg
}

// running is a consumer service run in-process.
type running struct {
	svc    *Service
	cancel context.CancelFunc
	errc   chan error
}

func (e *env) start(id string) *running {
	e.t.Helper()
	return e.startWith(id, e.config(id))
}

// startWith runs a consumer of configuration cfg in-process.
func (e *env) startWith(id string, cfg Config) *running {
	e.t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("consumer", id)
	svc, err := New(cfg, log)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{svc: svc, cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- svc.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// stop is SIGTERM: drain and return.
func (r *running) stop(t *testing.T) error {
	r.cancel()
	select {
	case err, ok := <-r.errc:
		if ok {
			close(r.errc)
			return err
		}
		return nil
	case <-time.After(30 * time.Second):
		t.Fatal("consumer did not stop within 30s of its context ending")
		return nil
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *env) addShape(handle string) {
	e.t.Helper()
	sh := &fanout.Shape{Handle: handle, Table: "public.items", PrimaryKey: []string{"id"}, CreatedAt: time.Now()}
	if _, err := e.bus.Shapes.Put(context.Background(), handle, sh.Encode()); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) bindAll(consumer string, epoch uint64) {
	for p := 0; p < testPartitions; p++ {
		e.bind(p, consumer, epoch)
	}
}

func (e *env) bind(p int, consumer string, epoch uint64) {
	e.t.Helper()
	b := &fanout.Binding{Partition: p, Consumer: consumer, Epoch: epoch}
	if _, err := e.bus.Bindings.Put(context.Background(), fanout.BindingKey(p), fanout.EncodeJSON(b)); err != nil {
		e.t.Fatal(err)
	}
}

func part(handle string) int { return fanout.Partition(handle, testPartitions) }

// publish sends f alone in a message, as ingest does when the bus is idle.
func (e *env) publish(f *fanout.Fragment, msgID string) {
	e.t.Helper()
	e.publishMessage(msgID, f)
}

// publishMessage sends frags (all of one partition) in one message.
func (e *env) publishMessage(msgID string, frags ...*fanout.Fragment) {
	e.t.Helper()
	p := part(frags[0].Shape)
	data, err := fanout.EncodeFragments(p, frags...)
	if err != nil {
		e.t.Fatal(err)
	}
	if msgID == "" {
		msgID = fanout.MsgID(p, frags)
	}
	msg := nats.NewMsg(fanout.Subject(p))
	msg.Data = data
	msg.Header.Set(fanout.HeaderMsgID, msgID)
	msg.Header.Set(fanout.HeaderCommitLSN, frags[0].CommitLSN.String())
	msg.Header.Set(fanout.HeaderShape, frags[0].Shape)
	if _, err := e.bus.JS.PublishMsg(context.Background(), msg); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) streamMsgs() uint64 {
	e.t.Helper()
	info, err := e.bus.Stream.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

// rows renders a shape's materialized rows as "id=v".
func (e *env) rows(handle string) []string {
	e.t.Helper()
	rows, err := shapelog.Materialize(e.dir, handle, []string{"id"})
	if err != nil {
		e.t.Fatal(err)
	}
	out := []string{}
	for _, r := range rows {
		v := "NULL"
		if r["v"] != nil {
			v = *r["v"]
		}
		out = append(out, *r["id"]+"="+v)
	}
	return out
}

func (e *env) awaitRows(handle string, want ...string) {
	e.t.Helper()
	testenv.Eventually(e.t, 20*time.Second, fmt.Sprintf("shape %s rows %v", handle, want), func() bool {
		return reflect.DeepEqual(e.rows(handle), want)
	})
}

func (e *env) awaitStreamEmpty() {
	e.t.Helper()
	testenv.Eventually(e.t, 20*time.Second, "stream FANOUT to be empty (everything acked)", func() bool { return e.streamMsgs() == 0 })
}

func (e *env) heartbeat(id string) *fanout.Heartbeat {
	entry, err := e.bus.Consumers.Get(context.Background(), id)
	if err != nil {
		return nil
	}
	hb, err := fanout.DecodeHeartbeat(entry.Value())
	if err != nil {
		e.t.Fatal(err)
	}
	return hb
}

func str(v string) *string { return &v }

func frag(shape string, lsn uint64, seq int, last bool, changes ...fanout.Change) *fanout.Fragment {
	return &fanout.Fragment{Version: fanout.WireVersion, Shape: shape, Xid: uint32(lsn), CommitLSN: pglogrepl.LSN(lsn),
		EndLSN: pglogrepl.LSN(lsn + 8), CommitTime: time.Now().UTC(), Seq: seq, Last: last, Changes: changes}
}

func ins(id, v string) fanout.Change {
	return fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": str(id), "v": str(v)}}
}

func upd(oldID, id, v string) fanout.Change {
	c := fanout.Change{Op: fanout.OpUpdate, Row: fanout.Row{"id": str(id), "v": str(v)}}
	if oldID != "" {
		c.Old = fanout.Row{"id": str(oldID)}
	}
	return c
}

func del(id string) fanout.Change {
	return fanout.Change{Op: fanout.OpDelete, Old: fanout.Row{"id": str(id)}}
}

func TestPersistsInOrderAcksAndSkipsDuplicates(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	e.addShape("sb")
	e.start("c1")
	e.bindAll("c1", 1)

	e.publish(frag("sa", 100, 0, false, ins("1", "a"), ins("2", "b")), "")
	e.publish(frag("sa", 100, 1, true, ins("10", "c")), "")
	e.publish(frag("sb", 100, 0, true, ins("7", "x")), "")
	e.publish(frag("sa", 200, 0, true, upd("", "1", "a2"), upd("2", "3", "b2"), del("10")), "")
	// The same fragment again under another message id (an ingest retry
	// past the duplicate window): it must appear once.
	e.publish(frag("sa", 200, 0, true, upd("", "1", "a2"), upd("2", "3", "b2"), del("10")), "retry-1")
	e.publish(frag("sa", 300, 0, true, ins("4", "d")), "")

	e.awaitRows("sa", "1=a2", "3=b2", "4=d")
	e.awaitRows("sb", "7=x")
	e.awaitStreamEmpty()
	testenv.Eventually(t, 10*time.Second, "heartbeat listing the owned partitions", func() bool {
		hb := e.heartbeat("c1")
		return hb != nil && len(hb.Owned) == testPartitions && hb.Owned[part("sa")] == 1
	})
	names := consumerNames(t, e)
	if want := fanout.ConsumerGroupName(part("sa"), 1); !contains(names, want) {
		t.Fatalf("durable consumer %s not created; consumers: %v", want, names)
	}
}

func TestRebindStopsOldOwnerAndNewOwnerContinuesExactly(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	p := part("sa")
	c1 := e.start("c1")
	c2 := e.start("c2")
	e.bind(p, "c1", 1)
	e.publish(frag("sa", 100, 0, true, ins("1", "a")), "")
	e.publish(frag("sa", 200, 0, false, ins("2", "b")), "")
	e.awaitStreamEmpty()
	// Transaction 200 is persisted in part: readers see none of it yet.
	e.awaitRows("sa", "1=a")

	e.bind(p, "c2", 2)
	testenv.Eventually(t, 10*time.Second, "c1 to release and c2 to own the partition", func() bool {
		h1, h2 := e.heartbeat("c1"), e.heartbeat("c2")
		_, held := h1.Owned[p]
		return h1 != nil && h2 != nil && !held && h2.Owned[p] == 2
	})
	// The rest of the transaction reaches the new owner; the old consumer is gone.
	e.publish(frag("sa", 200, 1, true, ins("3", "c")), "")
	e.publish(frag("sa", 300, 0, true, upd("", "1", "a2")), "")
	e.awaitRows("sa", "1=a2", "2=b", "3=c")
	e.awaitStreamEmpty()
	names := consumerNames(t, e)
	if contains(names, fanout.ConsumerGroupName(p, 1)) || !contains(names, fanout.ConsumerGroupName(p, 2)) {
		t.Fatalf("after rebinding, consumers are %v", names)
	}
	epoch, _ := os.ReadFile(fmt.Sprintf("%s/partitions/%d/epoch", e.dir, p))
	if strings.TrimSpace(string(epoch)) != "2" {
		t.Fatalf("epoch file holds %q, want 2", epoch)
	}
	if m := counter(t, c1.svc, "fanout_consumer_fragments_persisted_total"); m != 2 {
		t.Fatalf("old owner persisted %v fragments, want 2", m)
	}
	if m := counter(t, c2.svc, "fanout_consumer_fragments_persisted_total"); m != 2 {
		t.Fatalf("new owner persisted %v fragments, want 2", m)
	}
	if m := counter(t, c2.svc, "fanout_consumer_orphan_fragments_total"); m != 0 {
		t.Fatalf("new owner counted %v orphans: the log holds the begin of the transaction", m)
	}
	// Rebinding back to c1 at a newer epoch works too.
	e.bind(p, "c1", 3)
	e.publish(frag("sa", 400, 0, true, del("2")), "")
	e.awaitRows("sa", "1=a2", "3=c")
	e.awaitStreamEmpty()
}

func TestMalformedMessageIsDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	e.start("c1")
	e.bindAll("c1", 1)
	subject := fanout.Subject(part("sa"))
	bad := nats.NewMsg(subject)
	bad.Data = []byte(`{"not":"a fragment"}`)
	bad.Header.Set(fanout.HeaderMsgID, "bad-1")
	bad.Header.Set(fanout.HeaderShape, "sa")
	if _, err := e.bus.JS.PublishMsg(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	e.publish(frag("sa", 100, 0, true, ins("1", "a")), "")
	e.awaitRows("sa", "1=a")
	e.awaitStreamEmpty()

	testenv.Eventually(t, 10*time.Second, "one message in "+fanout.DeadLetterStream, func() bool {
		info, err := e.bus.DeadLetter.Info(context.Background())
		return err == nil && info.State.Msgs == 1
	})
	msg, err := e.bus.DeadLetter.GetLastMsgForSubject(context.Background(), fanout.DeadLetterSubject(part("sa"), "sa"))
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get(fanout.HeaderDeadSubject) != subject || !strings.Contains(msg.Header.Get(fanout.HeaderDeadReason), "not valid JSON") ||
		msg.Header.Get(fanout.HeaderMsgID) != "bad-1" || string(msg.Data) != `{"not":"a fragment"}` {
		t.Fatalf("dead letter headers %v data %q", msg.Header, msg.Data)
	}
	entry, err := e.bus.Failed.Get(context.Background(), "sa")
	if err != nil {
		t.Fatalf("shape not marked failed: %v", err)
	}
	if !strings.Contains(string(entry.Value()), "not valid JSON") {
		t.Fatalf("failure mark %s", entry.Value())
	}
}

// samePartition returns a handle other than h that hashes to h's partition.
func samePartition(h string) string {
	for i := 0; ; i++ {
		o := fmt.Sprintf("s%d", i)
		if o != h && part(o) == part(h) {
			return o
		}
	}
}

func TestAMessageOfSeveralShapesIsPersistedAndAPoisonFragmentIsDeadLetteredAlone(t *testing.T) {
	e := newEnv(t)
	other := samePartition("sa")
	e.addShape("sa")
	e.addShape(other)
	e.start("c1")
	e.bindAll("c1", 1)

	// One message: two transactions of sa and other, the way ingest packs
	// a partition's fragments when the bus is busy.
	e.publishMessage("",
		frag("sa", 100, 0, true, ins("1", "a")),
		frag(other, 100, 0, true, ins("7", "x")),
		frag("sa", 200, 0, true, ins("2", "b")))
	e.awaitRows("sa", "1=a", "2=b")
	e.awaitRows(other, "7=x")

	// A message whose middle fragment is unreadable: the fragments around
	// it are persisted; it goes to the dead-letter stream under its own
	// shape, which alone is marked failed.
	good1, _ := frag("sa", 300, 0, true, ins("3", "c")).Encode()
	good2, _ := frag("sa", 400, 0, true, ins("4", "d")).Encode()
	poison := []byte(`{"v":1,"shape":"` + other + `","unknown_field":true}`)
	msg := nats.NewMsg(fanout.Subject(part("sa")))
	msg.Data = fanout.EncodeMessage(part("sa"), [][]byte{good1, poison, good2})
	msg.Header.Set(fanout.HeaderMsgID, "mixed-1")
	if _, err := e.bus.JS.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	e.awaitRows("sa", "1=a", "2=b", "3=c", "4=d")
	e.awaitStreamEmpty()
	dead, err := e.bus.DeadLetter.GetLastMsgForSubject(context.Background(), fanout.DeadLetterSubject(part("sa"), other))
	if err != nil {
		t.Fatalf("the poison fragment is not in %s under its shape: %v", fanout.DeadLetterStream, err)
	}
	if string(dead.Data) != string(poison) || dead.Header.Get(fanout.HeaderMsgID) != "mixed-1#1" ||
		!strings.Contains(dead.Header.Get(fanout.HeaderDeadReason), "fragment 1 of the message") {
		t.Fatalf("dead letter headers %v data %q", dead.Header, dead.Data)
	}
	if _, err := e.bus.Failed.Get(context.Background(), other); err != nil {
		t.Fatalf("the poison fragment's shape is not marked failed: %v", err)
	}
	if _, err := e.bus.Failed.Get(context.Background(), "sa"); err == nil {
		t.Fatal("shape sa, whose fragments were all good, is marked failed")
	}
	if info, err := e.bus.DeadLetter.Info(context.Background()); err != nil || info.State.Msgs != 1 {
		t.Fatalf("dead-letter stream holds %v messages (err %v), want the poison fragment alone", info.State.Msgs, err)
	}
}

func TestFragmentsOfRemovedShapesAreDroppedAndLogsRemoved(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	c := e.start("c1")
	e.bindAll("c1", 1)
	e.publish(frag("sa", 100, 0, true, ins("1", "a")), "")
	e.awaitRows("sa", "1=a")

	if err := e.bus.Shapes.Delete(context.Background(), "sa"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the removed shape's log to be deleted", func() bool {
		_, err := os.Stat(e.dir + "/shapes/sa")
		return errors.Is(err, os.ErrNotExist)
	})
	e.publish(frag("sa", 200, 0, true, ins("2", "b")), "")
	e.publish(frag("snever", 100, 0, true, ins("1", "x")), "") // never defined
	e.awaitStreamEmpty()
	if _, err := os.Stat(e.dir + "/shapes/sa"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a fragment of the removed shape re-created its log: %v", err)
	}
	if _, err := os.Stat(e.dir + "/shapes/snever"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a log was created for a shape that does not exist: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, "two removed-shape drops counted", func() bool {
		return counter(t, c.svc, "fanout_consumer_removed_shape_drops_total") == 2
	})

	// A shape added after the consumer started is not mistaken for a removed one.
	e.addShape("snew")
	e.publish(frag("snew", 500, 0, true, ins("5", "n")), "")
	e.awaitRows("snew", "5=n")
}

func TestSIGTERMDrainsAndSaysSo(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	c := e.start("c1")
	e.bindAll("c1", 1)
	for i := 1; i <= 50; i++ {
		e.publish(frag("sa", uint64(i*100), 0, true, ins(fmt.Sprint(i), "v")), "")
	}
	testenv.Eventually(t, 10*time.Second, "some fragments persisted", func() bool { return len(e.rows("sa")) > 0 })
	if err := c.stop(t); err != nil {
		t.Fatalf("drain returned %v", err)
	}
	hb := e.heartbeat("c1")
	if hb == nil || !hb.Draining || len(hb.Owned) != 0 {
		t.Fatalf("heartbeat after drain: %+v", hb)
	}
	// Whatever was persisted and acked left the stream; the rest waits for the next owner.
	persisted := uint64(len(e.rows("sa")))
	if left := e.streamMsgs(); left+persisted < 50 {
		t.Fatalf("%d persisted + %d in the stream < 50 published: something was acked without being persisted", persisted, left)
	}
	e.start("c2")
	e.bindAll("c2", 2)
	e.awaitStreamEmpty()
	if n := len(e.rows("sa")); n != 50 {
		t.Fatalf("%d rows after the second owner, want 50", n)
	}
}

func TestConfigNeedsConsumerID(t *testing.T) {
	var cfg Config
	err := configs.Load("consumer", []string{"--storage.dir", t.TempDir()}, &cfg)
	if err == nil || !strings.Contains(err.Error(), "consumer.id") || !strings.Contains(err.Error(), "FANOUT_CONSUMER_ID") {
		t.Fatalf("missing consumer id: %v", err)
	}
	err = configs.Load("consumer", []string{"--consumer.id", "x", "--consumer.batch", "0"}, &cfg)
	if err == nil || !strings.Contains(err.Error(), "consumer.batch") {
		t.Fatalf("bad batch: %v", err)
	}
}

func consumerNames(t *testing.T, e *env) []string {
	t.Helper()
	l := e.bus.Stream.ConsumerNames(context.Background())
	var out []string
	for n := range l.Name() {
		out = append(out, n)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func counter(t *testing.T, s *Service, name string) float64 {
	t.Helper()
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// NATS going away and coming back: the consumer rides it out and goes on.
func TestSurvivesNATSRestart(t *testing.T) {
	e := newEnv(t)
	e.addShape("sa")
	e.start("c1")
	e.bindAll("c1", 1)
	e.publish(frag("sa", 100, 0, true, ins("1", "a")), "")
	e.awaitRows("sa", "1=a")

	e.ns.Shutdown()
	e.ns.Start(t)
	// The test's own connection reconnects too: publish once it is back.
	f := frag("sa", 200, 0, true, ins("2", "b"))
	data, _ := fanout.EncodeFragments(part("sa"), f)
	testenv.Eventually(t, 20*time.Second, "publishing after the NATS restart", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := e.bus.JS.Publish(ctx, fanout.Subject(part("sa")), data, jetstream.WithMsgID(fanout.MsgID(part("sa"), []*fanout.Fragment{f})))
		return err == nil
	})
	e.awaitRows("sa", "1=a", "2=b")
	e.awaitStreamEmpty()
	// Bindings are still watched after the restart.
	e.start("c2")
	e.bindAll("c2", 2)
	e.publish(frag("sa", 300, 0, true, ins("3", "c")), "")
	e.awaitRows("sa", "1=a", "2=b", "3=c")
	e.awaitStreamEmpty()
	testenv.Eventually(t, 10*time.Second, "c1 to release every partition", func() bool {
		hb := e.heartbeat("c1")
		return hb != nil && len(hb.Owned) == 0
	})
	// And c1 takes partitions again when they are bound to it after the restart.
	e.bindAll("c1", 3)
	testenv.Eventually(t, 20*time.Second, "c1 to own every partition at epoch 3", func() bool {
		hb := e.heartbeat("c1")
		return hb != nil && len(hb.Owned) == testPartitions && hb.Owned[part("sa")] == 3
	})
	e.publish(frag("sa", 400, 0, true, del("2")), "")
	e.awaitRows("sa", "1=a", "3=c")
	e.awaitStreamEmpty()
}
