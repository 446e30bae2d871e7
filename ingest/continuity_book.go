package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
)

// continuityBook keeps ingest's two continuity keys of the state bucket
// (fanout/continuity.go): the slot identity, and the continuity report the
// other services read (fanoutctl status, shapeapi's health and its
// refusal to serve stale shapes as up to date). Ingest is their only
// writer; every write goes through here, under one lock.
type continuityBook struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	m   *Metrics

	mu  sync.Mutex
	id  *fanout.SlotIdentity // nil: none recorded
	cur fanout.Continuity
}

// bookPutTimeout bounds one write of a continuity key.
const bookPutTimeout = 5 * time.Second

// loadBook reads both keys; missing keys are an empty book.
func loadBook(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger, m *Metrics) (*continuityBook, error) {
	b := &continuityBook{kv: kv, log: log, m: m, cur: fanout.Continuity{State: fanout.Continuous, Since: time.Now().UTC()}}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e, err := kv.Get(gctx, fanout.KeyIngestSlot)
	switch {
	case err == nil:
		if b.id, err = fanout.DecodeSlotIdentity(e.Value()); err != nil {
			return nil, fmt.Errorf("%w (delete it with nats kv del %s %s: ingest records it again, without the identity checks once)", err, fanout.StateBucket, fanout.KeyIngestSlot)
		}
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, fmt.Errorf("read %s from the %s bucket: %w", fanout.KeyIngestSlot, fanout.StateBucket, err)
	}
	e, err = kv.Get(gctx, fanout.KeyContinuity)
	switch {
	case err == nil:
		c, err := fanout.DecodeContinuity(e.Value())
		if err != nil {
			return nil, fmt.Errorf("%w (delete it with nats kv del %s %s)", err, fanout.StateBucket, fanout.KeyContinuity)
		}
		b.cur = *c
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, fmt.Errorf("read %s from the %s bucket: %w", fanout.KeyContinuity, fanout.StateBucket, err)
	}
	b.gauges()
	return b, nil
}

func (b *continuityBook) identity() *fanout.SlotIdentity {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.id == nil {
		return nil
	}
	id := *b.id
	return &id
}

// pendingBreak is the recorded break of the whole stream not yet reset.
func (b *continuityBook) pendingBreak() *fanout.Break { return b.recordedBreak(true) }

// tablesBreak is the recorded break of some tables (nil: none).
func (b *continuityBook) tablesBreak() *fanout.Break { return b.recordedBreak(false) }

func (b *continuityBook) recordedBreak(allTables bool) *fanout.Break {
	b.mu.Lock()
	defer b.mu.Unlock()
	if br := b.cur.Break; br != nil && br.AllTables() == allTables {
		c := *br
		return &c
	}
	return nil
}

func (b *continuityBook) lastReset() *fanout.Reset {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur.LastReset == nil {
		return nil
	}
	r := *b.cur.LastReset
	return &r
}

func (b *continuityBook) setIdentity(ctx context.Context, id *fanout.SlotIdentity) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, bookPutTimeout)
	defer cancel()
	if _, err := b.kv.Put(pctx, fanout.KeyIngestSlot, id.Encode()); err != nil {
		return fmt.Errorf("write %s to the %s bucket: %w", fanout.KeyIngestSlot, fanout.StateBucket, err)
	}
	b.id = id
	return nil
}

// setBreak records br (nil: the tables break is over). A break of the
// whole stream replaces any other; a tables break never replaces one.
func (b *continuityBook) setBreak(ctx context.Context, br *fanout.Break) error {
	return b.update(ctx, func(c *fanout.Continuity) {
		if c.Break != nil && c.Break.AllTables() && (br == nil || !br.AllTables()) {
			return // only its reset ends it
		}
		c.Break = br
	})
}

// reset records a completed reset: the break it recovers from is over
// (a tables break keeps the tables still missing, in still).
func (b *continuityBook) reset(ctx context.Context, r fanout.Reset, still *fanout.Break) error {
	return b.update(ctx, func(c *fanout.Continuity) {
		c.Resets++
		c.LastReset = &r
		c.Break = still
	})
}

// progress records how many of the last reset's shapes still resync.
func (b *continuityBook) progress(ctx context.Context, resyncing, failed int) error {
	return b.update(ctx, func(c *fanout.Continuity) {
		r := c.LastReset
		if r == nil {
			return
		}
		r.Resyncing, r.Failed = resyncing, failed
		if resyncing == 0 && r.ResyncedAt.IsZero() {
			r.ResyncedAt = time.Now().UTC()
		}
	})
}

// warn records the slot's warning ("" clears it); it logs only changes.
func (b *continuityBook) warn(ctx context.Context, w string, safeWAL *int64) error {
	if safeWAL != nil {
		b.m.SlotSafeWAL.Set(float64(*safeWAL))
	} else {
		b.m.SlotSafeWAL.Set(math.NaN())
	}
	b.mu.Lock()
	same := b.cur.Warning == w
	b.mu.Unlock()
	if same {
		return nil
	}
	if w != "" {
		b.log.Warn("replication slot at risk of invalidation: "+w, "config", "ingest.safe_wal_warn_bytes")
	} else {
		b.log.Info("replication slot no longer at risk of invalidation")
	}
	return b.update(ctx, func(c *fanout.Continuity) { c.Warning = w })
}

// checked records the time of a check that found nothing new.
func (b *continuityBook) checked(ctx context.Context) error {
	return b.update(ctx, func(*fanout.Continuity) {})
}

// update applies f to the report, derives its state, writes it and sets
// the gauges.
func (b *continuityBook) update(ctx context.Context, f func(*fanout.Continuity)) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := b.cur
	if next.LastReset != nil {
		r := *next.LastReset
		next.LastReset = &r
	}
	f(&next)
	now := time.Now().UTC()
	next.Checked = now
	state := fanout.Continuous
	switch {
	case next.Break != nil:
		state = fanout.Broken
	case next.LastReset != nil && next.LastReset.ResyncedAt.IsZero():
		state = fanout.Resyncing
	}
	if state != next.State {
		next.State, next.Since = state, now
	}
	pctx, cancel := context.WithTimeout(ctx, bookPutTimeout)
	defer cancel()
	if _, err := b.kv.Put(pctx, fanout.KeyContinuity, next.Encode()); err != nil {
		return fmt.Errorf("write %s to the %s bucket: %w", fanout.KeyContinuity, fanout.StateBucket, err)
	}
	b.cur = next
	b.gaugesLocked()
	return nil
}

func (b *continuityBook) gauges() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gaugesLocked()
}

func (b *continuityBook) gaugesLocked() {
	c := b.cur
	b.m.Broken.Set(boolGauge(c.Break != nil))
	b.m.SlotAtRisk.Set(boolGauge(c.Warning != ""))
	resyncing := 0
	if c.LastReset != nil && c.LastReset.ResyncedAt.IsZero() {
		resyncing = c.LastReset.Resyncing
	}
	b.m.Resyncing.Set(float64(resyncing))
	missing := 0
	if c.Break != nil && !c.Break.AllTables() {
		missing = len(c.Break.Tables)
	}
	b.m.MissingTables.Set(float64(missing))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
