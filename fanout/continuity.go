package fanout

import (
	"encoding/json"
	"fmt"
	"time"
)

// Replication continuity (guarantee 7). Ingest keeps two keys in StateBucket:
//
//	ingest_slot  SlotIdentity: which slot, on which server and timeline, ingest
//	             streams from, and what it knows of the publication; ingest's own
//	             memory, compared with what Postgres says on every start.
//	continuity   Continuity: what the rest of the system is told: continuous,
//	             broken (shapes stale, not served as up to date) or resyncing
//	             (shapes replaced, new snapshots being taken), the last reset,
//	             and a warning while the slot risks losing WAL it needs.
const (
	KeyIngestSlot = "ingest_slot"
	KeyContinuity = "continuity"
)

// SlotIdentity is the replication slot ingest streams from, as it made or
// first found it, and the publication as it last saw it.
type SlotIdentity struct {
	Slot string `json:"slot"`
	// SystemID and Timeline are IDENTIFY_SYSTEM's: another system (a
	// restore, a new cluster) or a timeline with no slot (a failover) is a
	// break of continuity.
	SystemID string `json:"system_id"`
	Timeline int32  `json:"timeline"`
	// CreatedLSN is where the slot began (its creation's consistent point;
	// for a slot ingest found, its confirmed position then). A slot of the
	// same name confirmed below it is another slot.
	CreatedLSN string    `json:"created_lsn"`
	CreatedAt  time.Time `json:"created_at"`
	// Created: ingest made the slot (false: it found it).
	Created bool `json:"created,omitempty"`

	Publication    string `json:"publication"`
	PublicationOID uint32 `json:"publication_oid"`
	// PublicationOwned: ingest created the publication (FOR ALL TABLES), so
	// it may create it again; an operator's publication is waited for.
	PublicationOwned bool `json:"publication_owned,omitempty"`
	// Tables maps each shaped table to its membership in the publication:
	// the pg_publication_rel (or, for FOR TABLES IN SCHEMA,
	// pg_publication_namespace) row's oid; 0 for FOR ALL TABLES. A table
	// removed and added back gets a new oid: the changes in between were
	// never sent.
	Tables map[string]uint32 `json:"tables,omitempty"`
	// Missing lists shaped tables seen outside the publication and not yet
	// resynced (their shapes are stale until they are back).
	Missing []string `json:"missing,omitempty"`
}

// Continuity states.
const (
	// Continuous: the stream is complete since every shape's snapshot.
	Continuous = "continuous"
	// Broken: changes were or are being lost; the shapes in scope are stale
	// and are not served as up to date. Ingest resyncs them as soon as it
	// can (when the publication or table is back), or stops
	// (ingest.on_continuity_break: stop).
	Broken = "broken"
	// Resyncing: the shapes in scope were replaced by new shapes with new
	// snapshots; some snapshots are not ready yet.
	Resyncing = "resyncing"
)

// Continuity is what ingest reports of the replication stream's continuity.
type Continuity struct {
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Break is set while State is Broken: what broke, and the reset ingest
	// still has to make (it makes it again after a restart).
	Break *Break `json:"break,omitempty"`
	// Warning is set while the slot risks losing WAL it still needs
	// (wal_status leaving "reserved", safe_wal_size under the margin).
	Warning string `json:"warning,omitempty"`
	// Resets counts the resets since the state key was made.
	Resets    uint64    `json:"resets"`
	LastReset *Reset    `json:"last_reset,omitempty"`
	Checked   time.Time `json:"checked"`
}

// Break is a break of continuity: its cause and what it affects.
type Break struct {
	Cause  string    `json:"cause"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
	// Tables is the scope: empty means every shape (the slot itself broke:
	// a new slot is taken); otherwise only these tables' shapes (they left
	// the publication).
	Tables []string `json:"tables,omitempty"`
	// Published is what ingest had published when it broke; SlotLSN the
	// slot's confirmed_flush_lsn then ("" when the slot was gone).
	Published string `json:"published_lsn,omitempty"`
	SlotLSN   string `json:"slot_lsn,omitempty"`
}

// AllTables reports whether the break affects every shape.
func (b *Break) AllTables() bool { return len(b.Tables) == 0 }

// Affects reports whether the break makes shapes of table stale.
func (b *Break) Affects(table string) bool {
	if b.AllTables() {
		return true
	}
	for _, t := range b.Tables {
		if t == table {
			return true
		}
	}
	return false
}

// Reset is a recovery from a Break: the shapes in scope were replaced by
// new shapes (new handles, new snapshots) once ingest routed from a
// continuous stream again.
type Reset struct {
	Break
	// NewSlotLSN is where the new slot starts ("" when the slot was kept:
	// only some tables were resynced).
	NewSlotLSN string    `json:"new_slot_lsn,omitempty"`
	ResetAt    time.Time `json:"reset_at"`
	// Replaced counts the shapes replaced; Examples lists some old -> new
	// handles (all of them up to a few dozen).
	Replaced int           `json:"replaced"`
	Examples []Replacement `json:"examples,omitempty"`
	// FirstRevision..LastRevision are the shapes-bucket revisions of the
	// new shapes: the ones whose snapshots make the resync.
	FirstRevision uint64 `json:"first_revision,omitempty"`
	LastRevision  uint64 `json:"last_revision,omitempty"`
	// Resyncing counts the new shapes whose snapshot is not ready yet,
	// Failed those whose snapshot failed.
	Resyncing int `json:"resyncing"`
	Failed    int `json:"failed,omitempty"`
	// ResyncedAt is when the last snapshot became ready (zero until then).
	ResyncedAt time.Time `json:"resynced_at,omitzero"`
}

// Replacement is one replaced shape.
type Replacement struct {
	Old string `json:"old"`
	New string `json:"new"`
}

// Current reports whether shapes of table are served from a continuous
// stream: not while the stream is broken for it. (While resyncing, the old
// handles are gone and the new ones wait for their snapshots.)
func (c *Continuity) Current(table string) bool {
	return c == nil || c.State != Broken || c.Break == nil || !c.Break.Affects(table)
}

// Encode is the StateBucket value of c.
func (c *Continuity) Encode() []byte { return mustJSON(c) }

// Encode is the StateBucket value of id.
func (id *SlotIdentity) Encode() []byte { return mustJSON(id) }

// DecodeContinuity parses a StateBucket continuity value.
func DecodeContinuity(data []byte) (*Continuity, error) {
	var c Continuity
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s value is not valid: %w", KeyContinuity, err)
	}
	switch c.State {
	case Continuous, Broken, Resyncing:
	default:
		return nil, fmt.Errorf("%s value: unknown state %q", KeyContinuity, c.State)
	}
	if c.State == Broken && c.Break == nil {
		return nil, fmt.Errorf("%s value: state %s without its break", KeyContinuity, c.State)
	}
	return &c, nil
}

// DecodeSlotIdentity parses a StateBucket ingest_slot value.
func DecodeSlotIdentity(data []byte) (*SlotIdentity, error) {
	var id SlotIdentity
	if err := json.Unmarshal(data, &id); err != nil {
		return nil, fmt.Errorf("%s value is not valid: %w", KeyIngestSlot, err)
	}
	if id.Slot == "" || id.SystemID == "" {
		return nil, fmt.Errorf("%s value: no slot or system id", KeyIngestSlot)
	}
	return &id, nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // state values always marshal
	}
	return b
}
