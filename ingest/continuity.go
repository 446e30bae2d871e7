package ingest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// The continuity check: is the stream ingest is about to read (or reads)
// still the continuation of what it published? It is a pure decision over
// what ingest reads from Postgres (Observed) and what it recorded in the
// state bucket (Recorded); resync.go performs what it decides.

// Causes of a break, the label of fanout_ingest_replication_resets_total.
const (
	CauseSlotMissing          = "slot_missing"          // the slot was dropped
	CauseSlotInvalidated      = "slot_invalidated"      // wal_status lost: Postgres removed WAL it needed
	CauseSlotMoved            = "slot_moved"            // confirmed past what ingest published: recreated or advanced by someone else
	CauseSlotReplaced         = "slot_replaced"         // a slot of the same name that began after ingest's
	CauseFailover             = "failover"              // a new timeline without the slot, or one that lacks WAL ingest read
	CauseNewSystem            = "new_system"            // another database system (system identifier)
	CausePublicationMissing   = "publication_missing"   // the publication was dropped
	CausePublicationRecreated = "publication_recreated" // dropped and made again (a new oid)
	CauseTableLeftPublication = "table_left_publication"
)

// SlotRow is what pg_replication_slots says of the slot.
type SlotRow struct {
	Plugin   string
	SlotType string
	// WALStatus: reserved, extended, unreserved or lost.
	WALStatus string
	// SafeWALSize is how many bytes of WAL can still be written before the
	// slot is invalidated; nil when max_slot_wal_keep_size is unlimited.
	SafeWALSize *int64
	Confirmed   pglogrepl.LSN // 0: none
	Active      bool
	// InvalidationReason (Postgres 17+) and Conflicting (16+) say a slot is
	// invalidated in other ways than by lost WAL.
	InvalidationReason string
	Conflicting        bool
}

// PublicationRow is the publication as pg_publication has it.
type PublicationRow struct {
	OID       uint32
	AllTables bool
	// Publish lists the operations it does not publish ("update", ...).
	Unpublished []string
}

// System is IDENTIFY_SYSTEM's answer.
type System struct {
	ID       string
	Timeline int32
}

// Observed is what ingest read from Postgres.
type Observed struct {
	// System is nil in the periodic check (it cannot change under an open
	// connection; a failover breaks the connection first).
	System *System
	// Switch is where the recorded timeline ends in the history of the
	// current one (0: unknown, or the timeline did not change).
	Switch      pglogrepl.LSN
	Slot        *SlotRow        // nil: no such slot
	Publication *PublicationRow // nil: no such publication
	// Shaped lists the tables shapes are defined on; Members maps those in
	// the publication to their membership oid (see fanout.SlotIdentity).
	Shaped  []string
	Members map[string]uint32
	// KeepSize is max_slot_wal_keep_size in bytes (-1: unlimited).
	KeepSize int64
}

// Recorded is what ingest recorded in the state bucket.
type Recorded struct {
	Identity *fanout.SlotIdentity // nil: none yet (a first start, or written by an older ingest)
	// Published is the LSN below which ingest published everything;
	// HasPublished false: ingest never streamed (or the key was deleted).
	Published    pglogrepl.LSN
	HasPublished bool
	// Pending is a break whose reset is to be made: recorded and not
	// completed (Resumed: ingest stopped meanwhile), or just seen in the
	// replication stream (the publication gone).
	Pending *fanout.Break
	Resumed bool
}

// Verdict is the continuity check's decision.
type Verdict struct {
	// First: nothing was streamed yet: create what is missing and record it.
	First bool
	// Break: the slot's stream is not continuous: every shape is resynced
	// from a new slot.
	Break *Broken
	// Missing: shaped tables outside the publication; their shapes are
	// stale and wait for the table to come back.
	Missing []string
	// Resync: tables whose shapes must be replaced: back in the
	// publication, or removed and added back between two checks.
	Resync []string
	// Warning: the slot risks losing WAL it still needs.
	Warning string
}

// Broken is a break of the whole stream.
type Broken struct {
	Cause  string
	Detail string
}

// Continuous reports whether nothing has to be done about the stream.
func (v Verdict) Continuous() bool {
	return v.Break == nil && len(v.Missing) == 0 && len(v.Resync) == 0
}

// Check decides whether the stream is continuous. safeMargin is
// ingest.safe_wal_warn_bytes. An error is a misconfiguration a reset
// cannot fix (the slot is not a pgoutput logical slot).
func Check(rec Recorded, obs Observed, safeMargin int64) (Verdict, error) {
	var v Verdict
	if s := obs.Slot; s != nil && (s.SlotType != "" && s.SlotType != "logical" || s.Plugin != "pgoutput") {
		return v, fmt.Errorf("replication slot exists but is not a pgoutput logical slot (type %q, plugin %q); drop it or set postgres.slot to another name", s.SlotType, s.Plugin)
	}
	v.Warning = SlotWarning(obs.Slot, obs.KeepSize, safeMargin)
	if rec.Pending != nil {
		v.Break = &Broken{rec.Pending.Cause, rec.Pending.Detail}
		return v, nil
	}
	if !rec.HasPublished {
		// Nothing streamed, nothing to lose: a first start (or an operator
		// who deleted ingest_published after rebuilding the shapes).
		v.First = true
		return v, nil
	}
	if v.Break = slotBreak(rec, obs); v.Break != nil {
		return v, nil
	}
	if v.Break = publicationBreak(rec, obs); v.Break != nil {
		return v, nil
	}
	v.Missing, v.Resync = tableChanges(rec.Identity, obs)
	return v, nil
}

// slotBreak compares the slot with what ingest recorded of it.
func slotBreak(rec Recorded, obs Observed) *Broken {
	id, s := rec.Identity, obs.Slot
	if id != nil && obs.System != nil {
		if obs.System.ID != id.SystemID {
			return &Broken{CauseNewSystem, fmt.Sprintf("the database system is %s, ingest streamed from system %s (a restore or another cluster)", obs.System.ID, id.SystemID)}
		}
		if obs.System.Timeline != id.Timeline {
			switch {
			case s == nil:
				return &Broken{CauseFailover, fmt.Sprintf("the server is on timeline %d, ingest streamed on timeline %d, and the slot is not there (a promoted standby)", obs.System.Timeline, id.Timeline)}
			case obs.Switch == 0:
				return &Broken{CauseFailover, fmt.Sprintf("the server is on timeline %d, ingest streamed on timeline %d, and its history does not say where that one ended", obs.System.Timeline, id.Timeline)}
			case rec.Published > obs.Switch:
				return &Broken{CauseFailover, fmt.Sprintf("timeline %d ended at %s, but ingest had streamed up to %s from it: the new primary lacks transactions the shapes hold", id.Timeline, obs.Switch, rec.Published)}
			}
			// A slot synchronized to the promoted standby (failover = true)
			// that holds everything ingest streamed: it continues.
		}
	}
	switch {
	case s == nil:
		return &Broken{CauseSlotMissing, fmt.Sprintf("the slot does not exist although ingest streamed from it up to %s (it was dropped)", rec.Published)}
	case s.WALStatus == "lost" || s.InvalidationReason != "" || s.Conflicting:
		why := "wal_status is lost: Postgres removed WAL it still needed (max_slot_wal_keep_size)"
		if s.InvalidationReason != "" {
			why = "it was invalidated (" + s.InvalidationReason + ")"
		} else if s.WALStatus != "lost" {
			why = "it conflicts with recovery and was invalidated"
		}
		return &Broken{CauseSlotInvalidated, "the slot can no longer be read: " + why}
	case s.Confirmed == 0:
		return &Broken{CauseSlotInvalidated, "the slot has no confirmed_flush_lsn"}
	case s.Confirmed > rec.Published:
		return &Broken{CauseSlotMoved, fmt.Sprintf("the slot's confirmed_flush_lsn %s is past what ingest published (%s): it was recreated or advanced by someone else, and the changes between were never streamed", s.Confirmed, rec.Published)}
	}
	if id != nil && (obs.System == nil || obs.System.Timeline == id.Timeline) {
		if created, err := pglogrepl.ParseLSN(id.CreatedLSN); err == nil && s.Confirmed < created {
			return &Broken{CauseSlotReplaced, fmt.Sprintf("the slot's confirmed_flush_lsn %s is before the slot ingest streamed from began (%s): it is another slot", s.Confirmed, created)}
		}
	}
	return nil
}

// publicationBreak: a dropped publication stops the stream for good (the
// slot cannot decode past the drop); one made again may miss what was
// committed in between.
func publicationBreak(rec Recorded, obs Observed) *Broken {
	id := rec.Identity
	switch {
	case obs.Publication == nil:
		return &Broken{CausePublicationMissing, "the publication does not exist (it was dropped): the slot cannot be read past the drop"}
	case id != nil && id.PublicationOID != 0 && obs.Publication.OID != id.PublicationOID:
		return &Broken{CausePublicationRecreated, fmt.Sprintf("the publication was dropped and created again (oid %d, was %d): changes committed in between were never streamed", obs.Publication.OID, id.PublicationOID)}
	}
	return nil
}

// tableChanges finds shaped tables outside the publication, and those to
// resync: back after being seen outside, or removed and added back
// between two checks (a new membership oid).
func tableChanges(id *fanout.SlotIdentity, obs Observed) (missing, resync []string) {
	for _, t := range obs.Shaped {
		oid, in := obs.Members[t]
		switch {
		case !in:
			missing = append(missing, t)
		case id == nil:
		case slices.Contains(id.Missing, t):
			resync = append(resync, t)
		default:
			if was, known := id.Tables[t]; known && was != oid {
				resync = append(resync, t)
			}
		}
	}
	slices.Sort(missing)
	slices.Sort(resync)
	return missing, resync
}

// SlotWarning says why the slot risks being invalidated ("" when it does
// not): wal_status past "reserved", or less safe_wal_size left than the
// margin (ingest.safe_wal_warn_bytes, or half of max_slot_wal_keep_size
// when that is smaller, so a small keep size warns before it is used up).
func SlotWarning(s *SlotRow, keepSize, margin int64) string {
	if s == nil {
		return ""
	}
	var parts []string
	switch s.WALStatus {
	case "extended":
		parts = append(parts, "wal_status is extended: the slot holds more than max_wal_size of WAL")
	case "unreserved":
		parts = append(parts, "wal_status is unreserved: the next checkpoint removes WAL the slot still needs, which invalidates it and makes every shape resync")
	}
	if keepSize > 0 && keepSize/2 < margin {
		margin = keepSize / 2
	}
	if s.SafeWALSize != nil && margin > 0 && *s.SafeWALSize < margin {
		parts = append(parts, fmt.Sprintf("safe_wal_size is %s, under the warning margin of %s", bytesText(*s.SafeWALSize), bytesText(margin)))
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, "; ") + "; confirmed_flush_lsn " + s.Confirmed.String() +
		" lags: see what holds the safe LSN back (fanoutctl status), or raise max_slot_wal_keep_size"
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// TimelineSwitch reads where timeline tli ended in a timeline history file
// (TIMELINE_HISTORY: lines "tli<TAB>switchpoint<TAB>reason"); 0 when the
// history does not name it.
func TimelineSwitch(history []byte, tli int32) pglogrepl.LSN {
	for line := range strings.SplitSeq(string(history), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != strconv.Itoa(int(tli)) {
			continue
		}
		if lsn, err := pglogrepl.ParseLSN(f[1]); err == nil {
			return lsn
		}
	}
	return 0
}

// NextIdentity is the identity ingest records after a check that found
// the stream continuous (or after a reset made it so): the system and
// timeline it streams on now, the publication and each shaped table's
// membership, and the tables still missing.
func NextIdentity(old *fanout.SlotIdentity, obs Observed, missing []string) *fanout.SlotIdentity {
	id := &fanout.SlotIdentity{}
	if old != nil {
		*id = *old
	}
	if obs.System != nil {
		id.SystemID, id.Timeline = obs.System.ID, obs.System.Timeline
	}
	if obs.Publication != nil {
		id.PublicationOID = obs.Publication.OID
	}
	id.Tables = map[string]uint32{}
	for _, t := range obs.Shaped {
		if oid, in := obs.Members[t]; in {
			id.Tables[t] = oid
		}
	}
	id.Missing = slices.Clone(missing)
	return id
}
