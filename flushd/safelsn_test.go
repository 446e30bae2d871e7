package flushd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/testenv"
)

// The scenarios of Electric's flush tracker, run against a real JetStream
// stream: the pending set is the FANOUT stream itself.
type scenario struct {
	t         *testing.T
	ctx       context.Context
	bus       *fanout.Bus
	published pglogrepl.LSN
	parts     map[string]int // each shape of a scenario has a partition of its own
	flushes   int            // consumers made by flush, for unique names
}

func (s *scenario) partition(shape string) int {
	if p, ok := s.parts[shape]; ok {
		return p
	}
	s.parts[shape] = len(s.parts)
	return s.parts[shape]
}

func newScenario(t *testing.T) *scenario {
	ns := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &scenario{t: t, ctx: ctx, bus: ns.Bus(t), parts: map[string]int{}}
}

// route publishes one fragment of the transaction committing at lsn to shape.
func (s *scenario) route(shape string, lsn pglogrepl.LSN) {
	s.t.Helper()
	f := &fanout.Fragment{Version: fanout.WireVersion, Shape: shape, CommitLSN: lsn, EndLSN: lsn + 1, Last: true}
	p := s.partition(shape)
	body, _ := fanout.EncodeFragments(p, f)
	msg := nats.NewMsg(fanout.Subject(p))
	msg.Data = body
	msg.Header.Set(fanout.HeaderCommitLSN, lsn.String())
	msg.Header.Set(fanout.HeaderShape, shape)
	if _, err := s.bus.JS.PublishMsg(s.ctx, msg, jetstream.WithMsgID(fanout.MsgID(p, []*fanout.Fragment{f}))); err != nil {
		s.t.Fatal(err)
	}
}

// ingestPublished says ingest has everything committed below lsn in the stream.
func (s *scenario) ingestPublished(lsn pglogrepl.LSN) { s.published = lsn }

// flush persists (acks) the oldest pending fragment of shape.
func (s *scenario) flush(shape string) {
	s.t.Helper()
	// A name of its own each time: a durable made again right after its
	// deletion can meet the server still writing the deleted one's state
	// ("rename .../obs/flush-x/o.dat.tmp: no such file or directory").
	s.flushes++
	name := fmt.Sprintf("flush-%s-%d", shape, s.flushes)
	c, err := s.bus.Stream.CreateOrUpdateConsumer(s.ctx, jetstream.ConsumerConfig{
		Durable: name, FilterSubject: fanout.Subject(s.partition(shape)), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	defer s.bus.Stream.DeleteConsumer(s.ctx, name)
	msgs, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		s.t.Fatal(err)
	}
	n := 0
	for m := range msgs.Messages() {
		if err := m.DoubleAck(s.ctx); err != nil {
			s.t.Fatal(err)
		}
		n++
	}
	if n != 1 {
		s.t.Fatalf("shape %s had no pending fragment to flush", shape)
	}
}

// remove drops a shape's fragments the way its partition's consumer does
// after `fanoutctl shape rm` (it acks them unpersisted): here, the purge of
// the shape's own partition.
func (s *scenario) remove(shape string) {
	s.t.Helper()
	if err := s.bus.Stream.Purge(s.ctx, jetstream.WithPurgeSubject(fanout.Subject(s.partition(shape)))); err != nil {
		s.t.Fatal(err)
	}
}

func (s *scenario) expectSafe(want pglogrepl.LSN, blocking string) {
	s.t.Helper()
	oldest, err := OldestPending(s.ctx, s.bus.Stream)
	if err != nil {
		s.t.Fatal(err)
	}
	if got := SafeLSN(s.published, oldest); got != want {
		s.t.Fatalf("safe LSN = %s, want %s (oldest %+v)", got, want, oldest)
	}
	gotBlocking := ""
	if oldest != nil {
		gotBlocking = oldest.Shape
	}
	if gotBlocking != blocking {
		s.t.Fatalf("blocking shape = %q, want %q", gotBlocking, blocking)
	}
}

func TestCommitTouchingNoShapeConfirmsAtOnce(t *testing.T) {
	s := newScenario(t)
	s.ingestPublished(0x100)
	s.expectSafe(0x100, "")
}

func TestShapeStaysPendingUntilFlushed(t *testing.T) {
	s := newScenario(t)
	s.route("sa", 0x200)
	s.ingestPublished(0x300)
	s.expectSafe(0x200, "sa")
	s.flush("sa")
	s.expectSafe(0x300, "")
}

func TestPartialFlushConfirmsTheLSNBeforeItsTransaction(t *testing.T) {
	s := newScenario(t)
	s.route("sa", 0x200)
	s.route("sb", 0x200)
	s.ingestPublished(0x280)
	s.flush("sa")
	s.expectSafe(0x200, "sb")
	s.flush("sb")
	s.expectSafe(0x280, "")
}

func TestMinimumAcrossShapes(t *testing.T) {
	s := newScenario(t)
	s.route("sb", 0x150)
	s.route("sa", 0x200)
	s.route("sc", 0x300)
	s.ingestPublished(0x400)
	s.expectSafe(0x150, "sb")
	s.flush("sa")
	s.expectSafe(0x150, "sb")
	s.flush("sb")
	s.expectSafe(0x300, "sc")
}

func TestNoShapeTransactionsMixedWithShapeOnes(t *testing.T) {
	s := newScenario(t)
	s.route("sa", 0x100)
	// 0x200 touched no shape: nothing in the stream for it.
	s.route("sa", 0x300)
	s.ingestPublished(0x400)
	s.expectSafe(0x100, "sa")
	s.flush("sa")
	s.expectSafe(0x300, "sa")
	s.flush("sa")
	s.expectSafe(0x400, "")
}

func TestRemovingTheLastPendingShapeConfirms(t *testing.T) {
	s := newScenario(t)
	s.route("sa", 0x100)
	s.ingestPublished(0x200)
	s.remove("sa")
	s.expectSafe(0x200, "")
}

func TestDeadShapePinsUntilRemovedThenBoundaryJumps(t *testing.T) {
	s := newScenario(t)
	s.route("sdead", 0x100)
	for lsn := pglogrepl.LSN(0x200); lsn <= 0x900; lsn += 0x100 {
		s.route("slive", lsn)
	}
	s.ingestPublished(0xA00)
	for i := 0; i < 8; i++ {
		s.flush("slive")
	}
	s.expectSafe(0x100, "sdead")
	s.remove("sdead")
	s.expectSafe(0xA00, "")
}

func TestTwoDeadShapesRemovedInTurn(t *testing.T) {
	s := newScenario(t)
	s.route("sd1", 0x100)
	s.route("sd2", 0x200)
	s.route("slive", 0x300)
	s.ingestPublished(0x400)
	s.flush("slive")
	s.expectSafe(0x100, "sd1")
	s.remove("sd1")
	s.expectSafe(0x200, "sd2")
	s.remove("sd2")
	s.expectSafe(0x400, "")
}

func TestPublishedBelowOldestPendingWins(t *testing.T) {
	// A fragment published after ingest's published LSN was read carries a
	// commit LSN at or above it: the published LSN bounds the safe LSN.
	s := newScenario(t)
	s.route("sa", 0x500)
	s.ingestPublished(0x300)
	s.expectSafe(0x300, "sa")
}

func TestForeignMessagesDoNotHideTheOldestFragment(t *testing.T) {
	s := newScenario(t)
	if _, err := s.bus.JS.Publish(s.ctx, fanout.Subject(1)+".sforeign", []byte("not a fragment")); err != nil {
		t.Fatal(err)
	}
	s.route("sa", 0x200)
	s.ingestPublished(0x300)
	s.expectSafe(0x200, "sa")
}
