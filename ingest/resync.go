package ingest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/shapes"
)

// What ingest does about the continuity check's verdict (continuity.go):
// at every session's start (checkAtStart) and while it streams
// (continuity_watch.go). A break of the whole stream takes a new slot and
// replaces every shape; a table that left the publication has its shapes
// reported stale until it is back, then replaced. Replacing a shape
// (shapes.Replace) gives it a new handle, an empty log and a new snapshot,
// which its snapshot runner takes once ingest routes it: so the snapshot's
// xid rule covers the boundary, as for any new shape.

// errRecheck ends a session so that the next one checks continuity before
// it streams; it is not a failure.
type errRecheck struct{ error }

func (e errRecheck) Unwrap() error { return e.error }

// recordedExamples bounds the replacements a reset record lists.
const recordedExamples = 20

// recorded is what ingest recorded: its identity and pending break (the
// book), and the published LSN (the state bucket, or this process's own
// when higher). Called with resyncMu held.
func (s *Service) recorded(ctx context.Context) (Recorded, error) {
	rec := Recorded{Identity: s.book.identity(), Pending: s.book.pendingBreak()}
	rec.Resumed = rec.Pending != nil
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e, err := s.bus.State.Get(gctx, fanout.KeyIngestPublished)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return rec, fmt.Errorf("read %s from the %s bucket: %w", fanout.KeyIngestPublished, fanout.StateBucket, err)
	default:
		p, err := fanout.DecodeIngestProgress(e.Value())
		if err != nil {
			return rec, err
		}
		rec.Published, rec.HasPublished = p.PublishedLSN, true
	}
	if s.tracker != nil && rec.HasPublished {
		rec.Published = max(rec.Published, s.tracker.Published())
	}
	if rec.Pending == nil {
		rec.Pending = s.hint
	}
	return rec, nil
}

// checkAtStart checks continuity before a session streams and does what
// the check decides; it returns where the slot resumes. Called with
// resyncMu held.
func (s *Service) checkAtStart(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn) (pglogrepl.LSN, error) {
	cfg := s.cfg.Postgres
	rec, err := s.recorded(ctx)
	if err != nil {
		return 0, err
	}
	obs, err := readObserved(ctx, conn, repl, cfg.Slot, cfg.Publication, s.tables.list(), rec.Identity)
	if err != nil {
		return 0, err
	}
	v, err := Check(rec, obs, s.cfg.Ingest.SafeWALWarnBytes)
	if err != nil {
		return 0, errFatal{fmt.Errorf("replication slot %s: %w", cfg.Slot, err)}
	}
	s.reportWarning(ctx, v, obs)
	switch {
	case v.First:
		return s.firstStart(ctx, conn, obs)
	case v.Break != nil:
		return s.resyncAll(ctx, conn, rec, obs, *v.Break)
	}
	if err := s.onTables(ctx, obs, v.Missing, v.Resync); err != nil {
		return 0, err
	}
	return obs.Slot.Confirmed, nil
}

// firstStart: nothing was streamed yet. It makes the publication and the
// slot when missing and records their identity.
func (s *Service) firstStart(ctx context.Context, conn *pgx.Conn, obs Observed) (pglogrepl.LSN, error) {
	cfg := s.cfg.Postgres
	id := &fanout.SlotIdentity{Slot: cfg.Slot, Publication: cfg.Publication, CreatedAt: time.Now().UTC()}
	if prev := s.book.identity(); prev != nil && prev.Publication == cfg.Publication {
		id.PublicationOwned = prev.PublicationOwned
	}
	if obs.Publication == nil {
		if err := createPublication(ctx, conn, cfg.Publication); err != nil {
			return 0, err
		}
		id.PublicationOwned = true
		s.log.Info("created publication FOR ALL TABLES", "publication", cfg.Publication)
	}
	var from pglogrepl.LSN
	if obs.Slot == nil {
		lsn, err := createSlot(ctx, conn, cfg.Slot)
		if err != nil {
			return 0, err
		}
		from, id.Created = lsn, true
		s.slotCreated = true
		s.log.Info("created replication slot", "slot", cfg.Slot, "at", from)
	} else {
		from = obs.Slot.Confirmed
	}
	id.CreatedLSN = from.String()
	return from, s.recordNewSlot(ctx, conn, id, obs.System)
}

// recordNewSlot records the identity of a slot ingest starts from, with
// the publication as it is now, and reports shaped tables outside it.
func (s *Service) recordNewSlot(ctx context.Context, conn *pgx.Conn, id *fanout.SlotIdentity, sys *System) error {
	cfg := s.cfg.Postgres
	obs, err := readObserved(ctx, conn, nil, cfg.Slot, cfg.Publication, s.tables.list(), nil)
	if err != nil {
		return err
	}
	obs.System = sys
	missing, _ := tableChanges(nil, obs)
	if err := s.book.setIdentity(ctx, NextIdentity(id, obs, missing)); err != nil {
		return err
	}
	return s.onTables(ctx, obs, missing, nil)
}

// resyncAll recovers from a break of the whole stream: it records the
// break (shapes are no longer served as up to date), waits for the
// publication if an operator's was dropped, takes a new slot, and replaces
// every shape. A failure leaves the break recorded: the next session makes
// the reset again from the start. It returns where the new slot starts.
func (s *Service) resyncAll(ctx context.Context, conn *pgx.Conn, rec Recorded, obs Observed, why Broken) (pglogrepl.LSN, error) {
	cfg := s.cfg.Postgres
	br := fanout.Break{Cause: why.Cause, Detail: why.Detail, At: time.Now().UTC()}
	if p := rec.Pending; p != nil {
		br.At = p.At
	}
	if p := rec.Pending; rec.Resumed {
		br = *p
	} else {
		if rec.HasPublished {
			br.Published = rec.Published.String()
		}
		if obs.Slot != nil && obs.Slot.Confirmed != 0 {
			br.SlotLSN = obs.Slot.Confirmed.String()
		}
	}
	if s.cfg.Ingest.OnContinuityBreak == OnBreakStop {
		return 0, errFatal{fmt.Errorf("%w (%s): %s; published %s, slot %s at %s. ingest.on_continuity_break is stop, so nothing was changed: %s",
			ErrSlotLost, why.Cause, why.Detail, orNone(br.Published), cfg.Slot, orNone(br.SlotLSN), runbook(cfg, why.Cause))}
	}
	if !rec.Resumed {
		s.log.Error("replication continuity broken: changes were lost, so every shape is resynced from a new slot (HTTP clients get 409 and a new handle)",
			"cause", why.Cause, "detail", why.Detail, "published_lsn", orNone(br.Published), "slot", cfg.Slot, "slot_lsn", orNone(br.SlotLSN))
	} else {
		s.log.Warn("completing the reset of an earlier break of replication continuity", "cause", br.Cause, "detail", br.Detail, "since", br.At)
	}
	if err := s.book.setBreak(ctx, &br); err != nil {
		return 0, err
	}
	s.hint = nil
	if s.batcher != nil {
		// What the last session routed goes out first: it is for shapes
		// about to be replaced (consumers drop it), but it must not mix
		// with the new slot's positions in the tracker.
		dctx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.DrainTimeout)
		if err := s.batcher.Drain(dctx); err != nil {
			s.log.Warn("fragments of the broken stream not all acked before the reset; consumers drop them (their shapes are replaced)", "err", err)
		}
		cancel()
	}
	owned := rec.Identity == nil || rec.Identity.PublicationOwned
	if obs.Publication == nil {
		if !owned {
			// The slot cannot be read past the drop: let go of its WAL now.
			if err := dropSlot(ctx, conn, cfg.Slot); err != nil {
				return 0, err
			}
			if err := s.awaitPublication(ctx, conn); err != nil {
				return 0, err
			}
		} else if err := createPublication(ctx, conn, cfg.Publication); err != nil {
			return 0, err
		}
	}
	if err := dropSlot(ctx, conn, cfg.Slot); err != nil {
		return 0, err
	}
	from, err := createSlot(ctx, conn, cfg.Slot)
	if err != nil {
		return 0, err
	}
	s.slotCreated = true
	if s.tracker != nil {
		s.tracker.Reset(from)
	}
	s.confirmed.Store(uint64(from))
	if err := s.putProgress(ctx, from); err != nil {
		return 0, fmt.Errorf("write the new slot's position to %s: %w", fanout.KeyIngestPublished, err)
	}
	id := &fanout.SlotIdentity{Slot: cfg.Slot, Publication: cfg.Publication, PublicationOwned: owned,
		Created: true, CreatedLSN: from.String(), CreatedAt: time.Now().UTC()}
	if err := s.recordNewSlot(ctx, conn, id, obs.System); err != nil {
		return 0, err
	}
	replaced, err := shapes.Replace(ctx, s.bus, nil, s.log)
	if err != nil {
		return 0, err
	}
	r := resetRecord(br, from.String(), replaced)
	var missing []string
	if id := s.book.identity(); id != nil {
		missing = id.Missing
	}
	if err := s.book.reset(ctx, r, tablesBreak(nil, missing, cfg.Publication)); err != nil {
		return 0, err
	}
	s.metrics.Resets.WithLabelValues(br.Cause).Inc()
	s.log.Info("replication reset: streaming from a new slot; every shape was replaced by a new one, whose snapshot is taken once ingest routes it",
		"cause", br.Cause, "new_slot_lsn", from, "shapes", len(replaced), "since_break", time.Since(br.At).Round(time.Millisecond))
	return from, nil
}

// onTables reports shaped tables outside the publication (their shapes
// are stale: not served as up to date) and resyncs the shapes of tables
// back in it (or removed and added back), then records the membership.
// Called with resyncMu held.
func (s *Service) onTables(ctx context.Context, obs Observed, missing, resync []string) error {
	cfg := s.cfg.Postgres
	id := s.book.identity()
	if id == nil {
		id = &fanout.SlotIdentity{Slot: cfg.Slot, Publication: cfg.Publication, CreatedAt: time.Now().UTC()}
		if obs.Slot != nil {
			id.CreatedLSN = obs.Slot.Confirmed.String()
		}
	}
	prev := s.book.tablesBreak()
	stop := s.cfg.Ingest.OnContinuityBreak == OnBreakStop
	if len(missing) > 0 && (prev == nil || !slices.Equal(prev.Tables, missing)) {
		if stop {
			return errFatal{fmt.Errorf("%w (%s): tables %s, which shapes use, are not in publication %s, so their shapes get no changes. ingest.on_continuity_break is stop: add them (ALTER PUBLICATION %s ADD TABLE ...) and rebuild their shapes, or remove the shapes",
				ErrSlotLost, CauseTableLeftPublication, strings.Join(missing, ", "), cfg.Publication, cfg.Publication)}
		}
		s.log.Error("tables that shapes use are not in the publication: their shapes get no changes and are not served as up to date; add them back (ALTER PUBLICATION ... ADD TABLE ...) and their shapes are resynced",
			"publication", cfg.Publication, "tables", missing)
	}
	if len(resync) > 0 && stop {
		return errFatal{fmt.Errorf("%w (%s): tables %s left publication %s and came back, so their shapes missed the changes in between. ingest.on_continuity_break is stop: rebuild their shapes (fanoutctl shape rm, then add), then delete the %s key (nats kv del %s %s) to accept the publication as it is",
			ErrSlotLost, CauseTableLeftPublication, strings.Join(resync, ", "), cfg.Publication, fanout.KeyIngestSlot, fanout.StateBucket, fanout.KeyIngestSlot)}
	}
	// Tables to resync stay recorded missing until their shapes are
	// replaced: if ingest stops in between, the next check resyncs them.
	still := tablesBreak(prev, missing, cfg.Publication)
	if len(resync) > 0 || !sameBreak(prev, still) {
		pending := NextIdentity(id, obs, append(slices.Clone(missing), resync...))
		if err := s.book.setIdentity(ctx, pending); err != nil {
			return err
		}
		if err := s.book.setBreak(ctx, tablesBreak(prev, append(slices.Clone(missing), resync...), cfg.Publication)); err != nil {
			return err
		}
	}
	if len(resync) > 0 {
		br := fanout.Break{Cause: CauseTableLeftPublication, At: time.Now().UTC(), Tables: resync,
			Detail: fmt.Sprintf("tables %s left publication %s (or were removed and added back): changes in between were never streamed", strings.Join(resync, ", "), cfg.Publication)}
		if prev != nil {
			br.At = prev.At
		}
		s.log.Error("replication continuity broken for some tables: their shapes are resynced (HTTP clients get 409 and a new handle)",
			"cause", br.Cause, "tables", resync, "publication", cfg.Publication)
		replaced, err := shapes.Replace(ctx, s.bus, resync, s.log)
		if err != nil {
			return err
		}
		if err := s.book.setIdentity(ctx, NextIdentity(id, obs, missing)); err != nil {
			return err
		}
		if err := s.book.reset(ctx, resetRecord(br, "", replaced), still); err != nil {
			return err
		}
		s.metrics.Resets.WithLabelValues(br.Cause).Inc()
		s.log.Info("tables resynced: their shapes were replaced by new ones, whose snapshots are taken once ingest routes them", "tables", resync, "shapes", len(replaced))
		return nil
	}
	if next := NextIdentity(id, obs, missing); !reflect.DeepEqual(next, id) {
		return s.book.setIdentity(ctx, next)
	}
	return nil
}

// tablesBreak is the break of the tables in missing (nil: none), dated
// from prev when it continues it.
func tablesBreak(prev *fanout.Break, missing []string, publication string) *fanout.Break {
	if len(missing) == 0 {
		return nil
	}
	slices.Sort(missing)
	br := &fanout.Break{Cause: CauseTableLeftPublication, At: time.Now().UTC(), Tables: slices.Compact(missing),
		Detail: fmt.Sprintf("tables %s are not in publication %s: their shapes get no changes until they are added back", strings.Join(missing, ", "), publication)}
	if prev != nil {
		br.At = prev.At
	}
	return br
}

func sameBreak(a, b *fanout.Break) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.Equal(a.Tables, b.Tables)
}

// awaitPublication waits for an operator's publication to exist again,
// polling with a backoff that grows to ingest.max_backoff; it says so
// every minute meanwhile.
func (s *Service) awaitPublication(ctx context.Context, conn *pgx.Conn) error {
	pub := s.cfg.Postgres.Publication
	s.ready.Set(false, "waiting for publication "+pub+" to be created again")
	s.log.Error("waiting for the publication to be created again; the slot was dropped so it pins no WAL, and every shape is resynced once it exists (or set ingest.on_continuity_break=stop to exit instead)",
		"publication", pub)
	since, said := time.Now(), time.Now()
	for backoff := time.Second; ; backoff = min(2*backoff, s.cfg.Ingest.MaxBackoff) {
		p, _, err := readPublication(ctx, conn, pub, nil)
		if err != nil {
			return err
		}
		if p != nil {
			s.log.Info("the publication exists again", "publication", pub, "waited", time.Since(since).Round(time.Second))
			return nil
		}
		if time.Since(said) >= time.Minute {
			said = time.Now()
			s.log.Warn("still waiting for the publication to be created again; shapes are stale meanwhile", "publication", pub, "waiting", time.Since(since).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// reportWarning records the slot's warning (logged when it changes).
func (s *Service) reportWarning(ctx context.Context, v Verdict, obs Observed) {
	var safe *int64
	if obs.Slot != nil {
		safe = obs.Slot.SafeWALSize
	}
	w := v.Warning
	if p := obs.Publication; p != nil && len(p.Unpublished) > 0 {
		slices.Sort(p.Unpublished)
		u := fmt.Sprintf("publication %s does not publish %s: shapes miss those changes (ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate'))",
			s.cfg.Postgres.Publication, strings.Join(p.Unpublished, ", "), s.cfg.Postgres.Publication)
		if w != "" {
			w += "; "
		}
		w += u
	}
	if err := s.book.warn(ctx, w, safe); err != nil {
		s.log.Warn("cannot record the slot's warning in the state bucket", "err", err)
	}
}

// resetRecord describes a completed reset.
func resetRecord(br fanout.Break, newSlot string, replaced []shapes.Replaced) fanout.Reset {
	r := fanout.Reset{Break: br, NewSlotLSN: newSlot, ResetAt: time.Now().UTC(), Replaced: len(replaced), Resyncing: len(replaced)}
	for i, x := range replaced {
		if i < recordedExamples {
			r.Examples = append(r.Examples, fanout.Replacement{Old: x.Old, New: x.New})
		}
		if r.FirstRevision == 0 || x.Revision < r.FirstRevision {
			r.FirstRevision = x.Revision
		}
		r.LastRevision = max(r.LastRevision, x.Revision)
	}
	if len(replaced) == 0 {
		r.ResyncedAt = r.ResetAt
	}
	return r
}

// runbook is what an operator does by hand when ingest stops on a break.
func runbook(cfg PostgresConfig, cause string) string {
	steps := fmt.Sprintf("remove and add every shape again (their logs miss changes), drop the slot if it still exists (SELECT pg_drop_replication_slot('%s')), delete ingest's record of it (nats kv del %s %s; nats kv del %s %s), and start ingest, which creates a new slot; "+
		"or set ingest.on_continuity_break=resync and ingest does this by itself",
		cfg.Slot, fanout.StateBucket, fanout.KeyIngestPublished, fanout.StateBucket, fanout.KeyIngestSlot)
	if cause == CausePublicationMissing {
		steps = fmt.Sprintf("create publication %s again, then %s", cfg.Publication, steps)
	}
	return steps
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
