package flushd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/observe"
)

// forgetAfter is how long a dead consumer's heartbeat key is kept for status
// before flushd deletes it.
const forgetAfter = time.Minute

// Service is flushd: one loop that owns all of its state.
type Service struct {
	cfg     Config
	log     *slog.Logger
	bus     *fanout.Bus
	m       *metrics
	ready   *observe.Readiness
	live    *Liveness
	binding map[int]fanout.Binding
	// rev is the KV revision of each partition's binding key as last seen,
	// and put whether that entry is a value (not a delete): bindings are
	// written with compare-and-set on it, so two flushd instances (a
	// rolling deploy) never both hand out a partition's next epoch.
	rev map[int]uint64
	put map[int]bool
	// epochFloor is the highest epoch heard of outside the current
	// bindings: consumers' storage and partitions, deleted bindings.
	epochFloor uint64

	lastSafe      *fanout.SafeLSN
	lastSafePut   time.Time
	oldest        *Oldest
	oldestSince   time.Time
	stallReported uint64 // stream seq of the last stall acted on
	evictWarned   time.Time
	// removedThisTick counts the messages of removed shapes deleted in
	// this tick (evictRemoved), bounded so one tick stays short.
	removedThisTick int
	// slotMissing: the last read found no slot (logged on change).
	slotMissing bool
}

// New prepares flushd on an existing bus.
func New(cfg Config, bus *fanout.Bus, log *slog.Logger, reg prometheus.Registerer, ready *observe.Readiness) *Service {
	return &Service{
		cfg: cfg, log: log, bus: bus, m: newMetrics(reg), ready: ready,
		live:    NewLiveness(cfg.Flushd.HeartbeatTimeout),
		binding: map[int]fanout.Binding{},
		rev:     map[int]uint64{}, put: map[int]bool{},
	}
}

// Run works until ctx ends. It returns an error only when NATS stays
// unusable; the caller exits non-zero and a restart resumes (flushd keeps
// no state of its own: bindings and heartbeats are in KV, pending work is the
// stream).
func (s *Service) Run(ctx context.Context) error {
	beats, err := s.bus.Consumers.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", fanout.ConsumersBucket, err)
	}
	defer beats.Stop()
	binds, err := s.bus.Bindings.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", fanout.BindingsBucket, err)
	}
	defer binds.Stop()

	// Bindings are only reassigned once both watches delivered what KV
	// already holds, so a restart does not move partitions needlessly.
	beatsLoaded, bindsLoaded := false, false
	tick := time.NewTicker(s.cfg.Flushd.PollInterval)
	defer tick.Stop()
	slotTick := time.NewTicker(5 * time.Second)
	defer slotTick.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-beats.Updates():
			if err := s.onHeartbeat(e, ok, &beatsLoaded); err != nil {
				return unlessStopping(ctx, err)
			}
		case e, ok := <-binds.Updates():
			if !ok {
				return unlessStopping(ctx, errors.New("binding watch closed by NATS"))
			}
			if e == nil {
				bindsLoaded = true
				continue
			}
			s.onBinding(e)
		case <-slotTick.C:
			s.readSlotLag(ctx)
			s.readPartitionLag(ctx)
		case <-tick.C:
			// Judge liveness on every heartbeat already received: after a
			// slow NATS call, some may be waiting in the channel.
			if err := s.drainHeartbeats(beats, &beatsLoaded); err != nil {
				return unlessStopping(ctx, err)
			}
			if err := s.tick(ctx, beatsLoaded && bindsLoaded); err != nil {
				if ctx.Err() != nil {
					return nil // stopping: the NATS call was cancelled
				}
				failures++
				s.ready.Set(false, err.Error())
				if failures%50 == 1 {
					s.log.Warn("cannot compute the safe LSN; keeping the last one", "err", err, "failures", failures)
				}
				// NATS reconnects on its own; a minute of failures at the
				// default poll interval means the bus is gone for good.
				if time.Duration(failures)*s.cfg.Flushd.PollInterval > 2*time.Minute {
					return fmt.Errorf("NATS unusable for 2m: %w", err)
				}
				continue
			}
			failures = 0
			s.ready.Set(true, "")
		}
	}
}

// unlessStopping drops err when ctx has ended: the watches close with ctx,
// and select may see a closed watch before it sees ctx.Done.
func unlessStopping(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// onHeartbeat takes one update of the heartbeat watch (ok false: the watch
// closed; a nil entry: what KV held at the start is all delivered).
func (s *Service) onHeartbeat(e jetstream.KeyValueEntry, ok bool, loaded *bool) error {
	switch {
	case !ok:
		return errors.New("heartbeat watch closed by NATS")
	case e == nil:
		*loaded = true
		return nil
	case e.Operation() != jetstream.KeyValuePut:
		s.live.Forget(e.Key())
		return nil
	}
	h, err := fanout.DecodeHeartbeat(e.Value())
	if err != nil {
		s.log.Warn("ignoring invalid heartbeat", "key", e.Key(), "err", err)
		return nil
	}
	s.raiseFloor(h.StorageEpoch)
	for _, epoch := range h.Owned {
		s.raiseFloor(epoch)
	}
	now := time.Now()
	if excused := s.live.Observe(*h, now); excused > 0 {
		// Nobody could ack either: the stall clock stops too, for the part
		// of the silence since the oldest fragment became the oldest.
		if !s.oldestSince.IsZero() {
			s.oldestSince = s.oldestSince.Add(excused)
			if s.oldestSince.After(now) {
				s.oldestSince = now
			}
		}
		s.log.Warn("no heartbeat from any consumer arrived for a while (a NATS outage or failover, or flushd was blocked); that time does not count towards the heartbeat timeout or stall grace",
			"silence", excused.Round(time.Millisecond), "first_back", h.Consumer)
	}
	return nil
}

// drainHeartbeats takes the heartbeat updates that are already waiting.
func (s *Service) drainHeartbeats(w jetstream.KeyWatcher, loaded *bool) error {
	for {
		select {
		case e, ok := <-w.Updates():
			if err := s.onHeartbeat(e, ok, loaded); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

func (s *Service) onBinding(e jetstream.KeyValueEntry) {
	p, err := fanout.ParseBindingKey(e.Key())
	if err != nil {
		s.log.Warn("ignoring foreign key in bindings bucket", "key", e.Key())
		return
	}
	if e.Revision() >= s.rev[p] {
		s.rev[p], s.put[p] = e.Revision(), e.Operation() == jetstream.KeyValuePut
	}
	if e.Operation() != jetstream.KeyValuePut {
		// Keep the last epoch: epochs must only grow, even if a key is deleted by hand.
		return
	}
	b, err := fanout.DecodeBinding(e.Value())
	if err != nil {
		// Consumers cannot read it either: the partition would stay
		// unowned after its consumer restarts. Rebind it at a newer epoch.
		s.log.Error("binding in KV is invalid; rebinding the partition at a newer epoch", "key", e.Key(), "err", err)
		if old, ok := s.binding[p]; ok {
			s.binding[p] = fanout.Binding{Partition: p, Epoch: old.Epoch}
		}
		return
	}
	s.raiseFloor(b.Epoch)
	if old, ok := s.binding[p]; ok && old.Epoch > b.Epoch {
		return
	}
	s.binding[p] = *b
}

func (s *Service) raiseFloor(epoch uint64) {
	s.epochFloor = max(s.epochFloor, epoch)
}

// writeBinding writes b with compare-and-set on the revision flushd last
// saw. lost is true when another writer (a second flushd) got there first;
// flushd then holds what KV holds, and the caller decides again next tick.
func (s *Service) writeBinding(ctx context.Context, b fanout.Binding) (lost bool, err error) {
	key := fanout.BindingKey(b.Partition)
	var rev uint64
	if s.put[b.Partition] {
		rev, err = s.bus.Bindings.Update(ctx, key, fanout.EncodeJSON(b), s.rev[b.Partition])
	} else {
		rev, err = s.bus.Bindings.Create(ctx, key, fanout.EncodeJSON(b)) // also over a deleted key
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		e, gerr := s.bus.Bindings.Get(ctx, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			s.put[b.Partition] = false // deleted since: the next write creates it
		case gerr != nil:
			return true, fmt.Errorf("re-read binding of partition %d after losing a write to another flushd: %w", b.Partition, gerr)
		default:
			s.onBinding(e)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("write binding of partition %d: %w", b.Partition, err)
	}
	s.rev[b.Partition], s.put[b.Partition] = rev, true
	s.binding[b.Partition] = b
	s.raiseFloor(b.Epoch)
	return false, nil
}

func (s *Service) tick(ctx context.Context, loaded bool) error {
	now := time.Now()
	if err := s.publishSafeLSN(ctx, now); err != nil {
		return err
	}
	live := s.live.Live(now)
	s.m.live.Set(float64(len(live)))
	if !loaded {
		return nil
	}
	s.forgetDead(ctx, now)
	moved := s.detectStall(now, live)
	for _, b := range Assign(s.binding, live, s.cfg.Bus.Partitions, moved, s.epochFloor) {
		old, had := s.binding[b.Partition]
		lost, err := s.writeBinding(ctx, b)
		if err != nil {
			return err
		}
		if lost {
			// The rest of this round was decided from a view that is now
			// stale (the other flushd wrote it too): decide again next tick.
			s.log.Info("another flushd wrote this partition's binding first; deciding again from what it wrote",
				"partition", b.Partition, "wanted", b.Consumer, "epoch", b.Epoch, "holds", s.binding[b.Partition])
			return nil
		}
		s.m.rebinds.Inc()
		if had {
			s.log.Info("partition rebound", "partition", b.Partition, "consumer", b.Consumer, "epoch", b.Epoch, "from", old.Consumer)
		} else {
			s.log.Info("partition bound", "partition", b.Partition, "consumer", b.Consumer, "epoch", b.Epoch)
		}
	}
	s.forgetStalePartitions(ctx)
	return nil
}

// forgetStalePartitions deletes the bindings of partitions at or beyond
// bus.partitions (left by a larger count) once every partition below it is
// bound under the current count: those epochs are above the stale ones, so
// the stale keys are not needed to keep epochs growing, and a consumer that
// still runs a worker for such a partition stops it.
func (s *Service) forgetStalePartitions(ctx context.Context) {
	n := s.cfg.Bus.Partitions
	for p := 0; p < n; p++ {
		if b, ok := s.binding[p]; !ok || b.Partitions != n || b.Consumer == "" {
			return
		}
	}
	for p := range s.binding {
		if p < n || !s.put[p] {
			continue
		}
		err := s.bus.Bindings.Delete(ctx, fanout.BindingKey(p), jetstream.LastRevision(s.rev[p]))
		if err != nil {
			s.log.Warn("cannot delete the binding of a partition beyond bus.partitions; retrying next tick", "partition", p, "err", err)
			return
		}
		s.put[p] = false
		s.log.Info("deleted the binding of a partition beyond bus.partitions (left by a larger partition count)", "partition", p, "partitions", n)
	}
}

// publishSafeLSN reads ingest's published LSN, then the oldest pending
// fragment (in that order: see SafeLSN), and writes the result.
func (s *Service) publishSafeLSN(ctx context.Context, now time.Time) error {
	var published pglogrepl.LSN
	e, err := s.bus.State.Get(ctx, fanout.KeyIngestPublished)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// ingest has published nothing yet: confirm nothing.
	case err != nil:
		return fmt.Errorf("read %s: %w", fanout.KeyIngestPublished, err)
	default:
		p, err := fanout.DecodeIngestProgress(e.Value())
		if err != nil {
			return err
		}
		published = p.PublishedLSN
	}
	s.removedThisTick = 0
	oldest, err := oldestPending(ctx, s.bus.Stream, func(msg *jetstream.RawStreamMsg) bool {
		return s.evictUnroutable(msg) || s.evictRemoved(ctx, msg, now)
	})
	if err != nil {
		return err
	}
	if oldest == nil || s.oldest == nil || oldest.StreamSeq != s.oldest.StreamSeq {
		s.oldestSince = now
	}
	s.oldest = oldest

	safe := &fanout.SafeLSN{LSN: SafeLSN(published, oldest), Computed: now}
	if oldest != nil {
		b := s.binding[oldest.Partition]
		safe.Blocking = &fanout.Blocker{
			Shape: oldest.Shape, Partition: oldest.Partition, Consumer: b.Consumer, Epoch: b.Epoch,
			CommitLSN: oldest.CommitLSN.String(), Pending: oldest.Pending,
		}
		s.m.pending.Set(float64(oldest.Pending))
		s.m.blockedFor.Set(now.Sub(s.oldestSince).Seconds())
	} else {
		s.m.pending.Set(0)
		s.m.blockedFor.Set(0)
	}
	s.m.publishedLSN.Set(float64(published))
	s.m.safeLSN.Set(float64(safe.LSN))

	// Write on change, and every second so status shows flushd is alive.
	if s.lastSafe != nil && s.lastSafe.LSN == safe.LSN && sameBlocker(s.lastSafe.Blocking, safe.Blocking) && now.Sub(s.lastSafePut) < time.Second {
		return nil
	}
	if _, err := s.bus.State.Put(ctx, fanout.KeySafeLSN, fanout.EncodeJSON(safe)); err != nil {
		return fmt.Errorf("write %s: %w", fanout.KeySafeLSN, err)
	}
	if s.lastSafe == nil || s.lastSafe.LSN != safe.LSN {
		s.log.Debug("safe LSN", "lsn", safe.LSN, "published", published, "blocking", safe.Blocking)
	}
	s.lastSafe, s.lastSafePut = safe, now
	return nil
}

// evictUnroutable moves a message that no consumer will ever pull (its
// subject names no partition) to the dead-letter stream, so it does not sit
// in the work queue for ever; messages on a partition's subjects are left to
// its consumer, which dead-letters what it cannot read.
// A failure is logged (at most every 10s) and retried at the next tick; it
// never holds up the safe LSN, which skips such messages anyway.
func (s *Service) evictUnroutable(msg *jetstream.RawStreamMsg) bool {
	if !unroutable(msg.Subject, s.cfg.Bus.Partitions) {
		return false
	}
	if err := s.deadLetterUnroutable(msg); err != nil && time.Since(s.evictWarned) > 10*time.Second {
		s.evictWarned = time.Now()
		s.log.Warn("cannot dead-letter a message on a subject no partition owns; it stays in the stream (check flushd's NATS permissions)",
			"subject", msg.Subject, "stream_seq", msg.Sequence, "err", err)
	}
	return true
}

func (s *Service) deadLetterUnroutable(msg *jetstream.RawStreamMsg) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reason := fmt.Sprintf("subject %s names no partition below bus.partitions (%d): no consumer pulls it; "+
		"it was not published by an ingest with the same bus.partitions (every service must use the same value)", msg.Subject, s.cfg.Bus.Partitions)
	out := nats.NewMsg(fanout.DeadLetterSubjectPrefix + ".unroutable")
	for k, vs := range msg.Header {
		// Nats-Expected-* are conditions on the FANOUT stream; the
		// dead-letter stream would refuse the message with them.
		if !strings.HasPrefix(k, "Nats-Expected-") {
			out.Header[k] = append([]string(nil), vs...)
		}
	}
	if out.Header.Get(fanout.HeaderMsgID) == "" {
		// Dead-lettering again after a failed delete stores it once.
		out.Header.Set(fanout.HeaderMsgID, fmt.Sprintf("unroutable:%d", msg.Sequence))
	}
	out.Header.Set(fanout.HeaderDeadReason, reason)
	out.Header.Set(fanout.HeaderDeadSubject, msg.Subject)
	out.Data = msg.Data
	if _, err := s.bus.JS.PublishMsg(ctx, out); err != nil {
		return fmt.Errorf("dead-letter unroutable message %d of stream %s: %w", msg.Sequence, fanout.StreamName, err)
	}
	if err := s.bus.Stream.DeleteMsg(ctx, msg.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete dead-lettered message %d from stream %s: %w", msg.Sequence, fanout.StreamName, err)
	}
	s.log.Error("message on a subject no partition owns dead-lettered", "subject", msg.Subject, "stream_seq", msg.Sequence,
		"stream", fanout.DeadLetterStream, "reason", reason)
	return nil
}

// removedGrace is how long the oldest message must have been the oldest
// before flushd looks whether all its shapes were removed: normally the
// partition's consumer drops such fragments itself, within milliseconds.
const removedGrace = time.Second

// evictRemoved deletes from the stream a message that holds fragments of
// removed shapes only, once it has held the safe LSN back for removedGrace:
// a shape removed while its partition's consumer is gone or stuck must not
// pin WAL (the consumer would drop those fragments, unpersisted, anyway).
// A message of which any shape still exists is left to its consumer.
func (s *Service) evictRemoved(ctx context.Context, msg *jetstream.RawStreamMsg, now time.Time) bool {
	if s.oldest == nil || msg.Sequence < s.oldest.StreamSeq || now.Sub(s.oldestSince) < removedGrace || s.removedThisTick >= maxForeignSkipped/2 {
		return false
	}
	p, err := fanout.ParseSubject(msg.Subject)
	if err != nil {
		return false
	}
	items, err := fanout.DecodeMessage(p, msg.Data)
	if err != nil {
		return false // its consumer dead-letters it
	}
	seen := map[string]bool{}
	for _, it := range items {
		if it.Shape == "" {
			return false // unreadable: its consumer dead-letters it
		}
		if seen[it.Shape] {
			continue
		}
		seen[it.Shape] = true
		_, err := s.bus.Shapes.Get(ctx, it.Shape)
		if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
			return false // the shape exists, or KV cannot tell: keep it
		}
	}
	if err := s.bus.Stream.DeleteMsg(ctx, msg.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		s.log.Warn("cannot delete a message of removed shapes from the stream; its partition's consumer drops it when it runs",
			"stream_seq", msg.Sequence, "err", err)
		return false
	}
	s.removedThisTick++
	s.m.removedEvicted.Inc()
	s.log.Info("deleted a message of removed shapes only (its partition's consumer did not drop it)",
		"partition", p, "stream_seq", msg.Sequence, "shapes", len(seen), "commit_lsn", msg.Header.Get(fanout.HeaderCommitLSN))
	return true
}

func sameBlocker(a, b *fanout.Blocker) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Shape == b.Shape && a.CommitLSN == b.CommitLSN && a.Consumer == b.Consumer
}

// detectStall moves the partition of the oldest pending fragment when that
// fragment has been the oldest for longer than stall_grace while its owner
// is live: the owner is stuck, and WAL must not wait for it.
func (s *Service) detectStall(now time.Time, live []string) map[int]bool {
	o := s.oldest
	if o == nil || now.Sub(s.oldestSince) < s.cfg.Flushd.StallGrace || s.stallReported == o.StreamSeq {
		return nil
	}
	b, ok := s.binding[o.Partition]
	if !ok || len(live) < 2 {
		return nil
	}
	s.stallReported = o.StreamSeq
	s.m.stalls.Inc()
	s.log.Warn("consumer stalled: its oldest pending fragment has not moved; moving the partition",
		"consumer", b.Consumer, "partition", o.Partition, "shape", o.Shape, "commit_lsn", o.CommitLSN,
		"stalled_for", now.Sub(s.oldestSince).Round(time.Second))
	s.oldestSince = now
	return map[int]bool{o.Partition: true}
}

// forgetDead deletes heartbeat keys of consumers dead for a while, so status
// does not list them for ever.
func (s *Service) forgetDead(ctx context.Context, now time.Time) {
	for _, id := range s.live.Known() {
		if t, _ := s.live.LastSeen(id); now.Sub(t) > forgetAfter+s.cfg.Flushd.HeartbeatTimeout {
			if err := s.bus.Consumers.Delete(ctx, id); err != nil {
				s.log.Warn("cannot delete heartbeat of dead consumer", "consumer", id, "err", err)
				continue
			}
			s.live.Forget(id)
			s.log.Info("forgot dead consumer", "consumer", id, "last_heartbeat", t)
		}
	}
}

// readSlotLag feeds the slot lag metrics; it is optional (postgres.url empty
// disables it) and never stops flushd. A missing slot is reported as
// missing (fanout_flushd_slot_exists 0, lag NaN), never as a lag of 0; an
// unreadable one as unknown (NaN).
func (s *Service) readSlotLag(ctx context.Context) {
	if s.cfg.Postgres.URL == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	lag, err := SlotLag(ctx, s.cfg.Postgres.URL, s.cfg.Postgres.Slot)
	missing := errors.Is(err, ErrSlotMissing)
	if missing != s.slotMissing {
		s.slotMissing = missing
		if missing {
			s.log.Warn("replication slot does not exist: ingest has not made it yet, or it was dropped (fanoutctl status says what ingest found)", "slot", s.cfg.Postgres.Slot)
		} else {
			s.log.Info("replication slot exists", "slot", s.cfg.Postgres.Slot)
		}
	}
	if err != nil {
		s.log.Debug("cannot read slot lag", "err", err)
		s.m.slotLag.Set(math.NaN())
		if missing {
			s.m.slotExists.Set(0)
		}
		return
	}
	s.m.slotExists.Set(1)
	s.m.slotLag.Set(float64(lag.LagBytes))
}

// readPartitionLag feeds the per-partition pending metric from the
// partitions' JetStream consumers. Partitions without a consumer (no owner
// yet) show their pending fragments in fanout_flushd_pending_fragments only.
func (s *Service) readPartitionLag(ctx context.Context) {
	list := s.bus.Stream.ListConsumers(ctx)
	for info := range list.Info() {
		var p int
		var epoch uint64
		if _, err := fmt.Sscanf(info.Name, "part-%d-e%d", &p, &epoch); err != nil {
			continue // not a partition consumer (e.g. one made by hand)
		}
		s.m.partition.WithLabelValues(strconv.Itoa(p)).Set(float64(info.NumPending + uint64(info.NumAckPending)))
	}
	if err := list.Err(); err != nil {
		s.log.Debug("cannot list partition consumers", "err", err)
	}
}

// ErrSlotMissing: pg_replication_slots has no such slot.
var ErrSlotMissing = errors.New("the replication slot does not exist")

// Slot is what pg_replication_slots says of the slot.
type Slot struct {
	Name              string `json:"slot"`
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn"`
	CurrentWALLSN     string `json:"current_wal_lsn"`
	LagBytes          int64  `json:"lag_bytes"`
	WALStatus         string `json:"wal_status"`
	Active            bool   `json:"active"`
}

// SlotLag reads the slot's confirmed position and retained WAL.
func SlotLag(ctx context.Context, url, slot string) (*Slot, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to Postgres: %w", err)
	}
	defer conn.Close(context.Background())
	var out Slot
	var walStatus *string
	err = conn.QueryRow(ctx, `SELECT slot_name, coalesce(confirmed_flush_lsn::text, ''), pg_current_wal_lsn()::text,
		coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0), wal_status, active
		FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&out.Name, &out.ConfirmedFlushLSN, &out.CurrentWALLSN, &out.LagBytes, &walStatus, &out.Active)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("replication slot %q: %w", slot, ErrSlotMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("read pg_replication_slots: %w", err)
	}
	if walStatus != nil {
		out.WALStatus = *walStatus
	}
	return &out, nil
}
