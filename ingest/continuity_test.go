package ingest

import (
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

func TestContinuityCheck(t *testing.T) {
	lsn := func(s string) pglogrepl.LSN {
		l, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	size := func(n int64) *int64 { return &n }
	identity := func() *fanout.SlotIdentity {
		return &fanout.SlotIdentity{Slot: "fanout", SystemID: "7301", Timeline: 1, CreatedLSN: "0/1000000",
			Publication: "fanout", PublicationOID: 16400, Tables: map[string]uint32{"public.items": 16410, "public.other": 16411}}
	}
	// A healthy stream: the slot confirmed at or below what was published.
	healthy := func() (Recorded, Observed) {
		return Recorded{Identity: identity(), Published: lsn("0/3000000"), HasPublished: true},
			Observed{
				System:      &System{ID: "7301", Timeline: 1},
				Slot:        &SlotRow{Plugin: "pgoutput", SlotType: "logical", WALStatus: "reserved", Confirmed: lsn("0/2F00000")},
				Publication: &PublicationRow{OID: 16400},
				Shaped:      []string{"public.items", "public.other"},
				Members:     map[string]uint32{"public.items": 16410, "public.other": 16411},
				KeepSize:    -1,
			}
	}
	cases := []struct {
		name    string
		change  func(*Recorded, *Observed)
		first   bool
		cause   string // a break of the whole stream
		missing []string
		resync  []string
		warning string // a part of the warning
	}{
		{name: "continuous", change: func(*Recorded, *Observed) {}},
		{name: "slot confirmed exactly at published", change: func(r *Recorded, o *Observed) { o.Slot.Confirmed = r.Published }},
		{name: "first start: nothing published", change: func(r *Recorded, o *Observed) { *r = Recorded{}; o.Slot = nil; o.Publication = nil }, first: true},
		{name: "first start with an existing slot", change: func(r *Recorded, _ *Observed) { *r = Recorded{} }, first: true},
		{name: "written by an older ingest: no identity, slot behind", change: func(r *Recorded, _ *Observed) { r.Identity = nil }},
		{name: "no identity, slot moved on", change: func(r *Recorded, o *Observed) { r.Identity = nil; o.Slot.Confirmed = lsn("0/5000000") }, cause: CauseSlotMoved},
		{name: "slot dropped", change: func(_ *Recorded, o *Observed) { o.Slot = nil }, cause: CauseSlotMissing},
		{name: "slot invalidated", change: func(_ *Recorded, o *Observed) { o.Slot.WALStatus = "lost" }, cause: CauseSlotInvalidated},
		{name: "slot invalidated, Postgres 17 reason", change: func(_ *Recorded, o *Observed) { o.Slot.InvalidationReason = "idle_timeout" }, cause: CauseSlotInvalidated},
		{name: "slot without confirmed position", change: func(_ *Recorded, o *Observed) { o.Slot.Confirmed = 0 }, cause: CauseSlotInvalidated},
		{name: "slot advanced past published", change: func(_ *Recorded, o *Observed) { o.Slot.Confirmed = lsn("0/3000001") }, cause: CauseSlotMoved},
		{name: "slot recreated (starts after published)", change: func(_ *Recorded, o *Observed) { o.Slot.Confirmed = lsn("0/9000000") }, cause: CauseSlotMoved},
		{name: "another slot that began before ingest's", change: func(_ *Recorded, o *Observed) { o.Slot.Confirmed = lsn("0/800000") }, cause: CauseSlotReplaced},
		{name: "another database system", change: func(_ *Recorded, o *Observed) { o.System.ID = "9999" }, cause: CauseNewSystem},
		{name: "failover to a standby without the slot", change: func(_ *Recorded, o *Observed) { o.System.Timeline = 2; o.Slot = nil }, cause: CauseFailover},
		{name: "failover, history unknown", change: func(_ *Recorded, o *Observed) { o.System.Timeline = 2 }, cause: CauseFailover},
		{name: "failover to a standby that lacks streamed WAL", change: func(_ *Recorded, o *Observed) { o.System.Timeline = 2; o.Switch = lsn("0/2000000") }, cause: CauseFailover},
		{name: "failover with a synchronized slot that holds everything", change: func(_ *Recorded, o *Observed) { o.System.Timeline = 2; o.Switch = lsn("0/3000100") }},
		{name: "periodic check (no system read) keeps the creation check", change: func(_ *Recorded, o *Observed) { o.System = nil; o.Slot.Confirmed = lsn("0/800000") }, cause: CauseSlotReplaced},
		{name: "pending break after a restart", change: func(r *Recorded, _ *Observed) {
			r.Pending = &fanout.Break{Cause: CauseSlotMissing, Detail: "dropped"}
		}, cause: CauseSlotMissing},
		{name: "publication dropped", change: func(_ *Recorded, o *Observed) { o.Publication = nil; o.Members = nil }, cause: CausePublicationMissing},
		{name: "publication recreated", change: func(_ *Recorded, o *Observed) { o.Publication.OID = 16500 }, cause: CausePublicationRecreated},
		{name: "slot break wins over publication", change: func(_ *Recorded, o *Observed) { o.Slot = nil; o.Publication = nil }, cause: CauseSlotMissing},
		{name: "table left the publication", change: func(_ *Recorded, o *Observed) { delete(o.Members, "public.other") }, missing: []string{"public.other"}},
		{name: "table still missing", change: func(r *Recorded, o *Observed) {
			r.Identity.Missing = []string{"public.other"}
			delete(o.Members, "public.other")
		}, missing: []string{"public.other"}},
		{name: "table back", change: func(r *Recorded, o *Observed) {
			r.Identity.Missing = []string{"public.other"}
			o.Members["public.other"] = 16420
		}, resync: []string{"public.other"}},
		{name: "table removed and added back between checks", change: func(_ *Recorded, o *Observed) { o.Members["public.items"] = 16430 }, resync: []string{"public.items"}},
		{name: "a new shaped table in the publication", change: func(_ *Recorded, o *Observed) {
			o.Shaped = append(o.Shaped, "public.third")
			o.Members["public.third"] = 16440
		}},
		{name: "a new shaped table outside the publication", change: func(_ *Recorded, o *Observed) { o.Shaped = append(o.Shaped, "public.third") }, missing: []string{"public.third"}},
		{name: "FOR ALL TABLES", change: func(r *Recorded, o *Observed) {
			r.Identity.Tables = map[string]uint32{"public.items": 0, "public.other": 0}
			o.Publication.AllTables = true
			o.Members = map[string]uint32{"public.items": 0, "public.other": 0}
		}},
		{name: "warning: wal_status extended", change: func(_ *Recorded, o *Observed) { o.Slot.WALStatus = "extended" }, warning: "wal_status is extended"},
		{name: "warning: wal_status unreserved", change: func(_ *Recorded, o *Observed) { o.Slot.WALStatus = "unreserved" }, warning: "next checkpoint removes WAL"},
		{name: "warning: safe_wal_size under the margin", change: func(_ *Recorded, o *Observed) { o.Slot.SafeWALSize = size(100 << 20); o.KeepSize = 1 << 40 }, warning: "safe_wal_size is 100.0 MiB, under the warning margin of 1.0 GiB"},
		{name: "warning: small keep size, half of it", change: func(_ *Recorded, o *Observed) { o.Slot.SafeWALSize = size(15 << 20); o.KeepSize = 32 << 20 }, warning: "under the warning margin of 16.0 MiB"},
		{name: "no warning: small keep size barely used", change: func(_ *Recorded, o *Observed) { o.Slot.SafeWALSize = size(30 << 20); o.KeepSize = 32 << 20 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, obs := healthy()
			c.change(&rec, &obs)
			v, err := Check(rec, obs, 1<<30)
			if err != nil {
				t.Fatal(err)
			}
			cause := ""
			if v.Break != nil {
				cause = v.Break.Cause
				if v.Break.Detail == "" {
					t.Error("a break without a detail")
				}
			}
			if v.First != c.first || cause != c.cause || !reflect.DeepEqual(v.Missing, c.missing) || !reflect.DeepEqual(v.Resync, c.resync) {
				t.Fatalf("verdict first %v, break %q (%+v), missing %v, resync %v; want first %v, break %q, missing %v, resync %v",
					v.First, cause, v.Break, v.Missing, v.Resync, c.first, c.cause, c.missing, c.resync)
			}
			if (c.warning == "") != (v.Warning == "") || !strings.Contains(v.Warning, c.warning) {
				t.Fatalf("warning %q, want one with %q", v.Warning, c.warning)
			}
			if c.cause == "" && c.first == v.First && v.Continuous() != (len(c.missing)+len(c.resync) == 0) {
				t.Fatal("Continuous() disagrees with the verdict")
			}
		})
	}
}

func TestContinuityCheckRefusesAnotherKindOfSlot(t *testing.T) {
	for _, s := range []*SlotRow{{SlotType: "physical"}, {SlotType: "logical", Plugin: "wal2json"}} {
		_, err := Check(Recorded{}, Observed{Slot: s}, 0)
		if err == nil || !strings.Contains(err.Error(), "not a pgoutput logical slot") {
			t.Errorf("slot %+v: %v, want an error naming the slot kind", s, err)
		}
	}
}

func TestTimelineSwitch(t *testing.T) {
	history := []byte("1\t0/3000060\tno recovery target specified\n\n2\t0/5A0000A8\tno recovery target specified\n")
	for tli, want := range map[int32]string{1: "0/3000060", 2: "0/5A0000A8", 3: "0/0"} {
		if got := TimelineSwitch(history, tli).String(); got != want {
			t.Errorf("timeline %d ends at %s, want %s", tli, got, want)
		}
	}
}

func TestNextIdentity(t *testing.T) {
	old := &fanout.SlotIdentity{Slot: "fanout", SystemID: "1", Timeline: 1, CreatedLSN: "0/10", Publication: "fanout", PublicationOID: 5,
		Tables: map[string]uint32{"public.gone": 7}, Missing: []string{"public.x"}}
	obs := Observed{System: &System{ID: "1", Timeline: 2}, Publication: &PublicationRow{OID: 5},
		Shaped: []string{"public.a", "public.b"}, Members: map[string]uint32{"public.a": 9}}
	got := NextIdentity(old, obs, []string{"public.b"})
	want := &fanout.SlotIdentity{Slot: "fanout", SystemID: "1", Timeline: 2, CreatedLSN: "0/10", Publication: "fanout", PublicationOID: 5,
		Tables: map[string]uint32{"public.a": 9}, Missing: []string{"public.b"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("NextIdentity = %+v, want %+v", got, want)
	}
	if old.Timeline != 1 || len(old.Tables) != 1 {
		t.Fatal("NextIdentity changed its input")
	}
}

func TestParseSlotRow(t *testing.T) {
	// As to_jsonb prints a Postgres 15 row and a Postgres 17 one.
	pg15 := `{"active": true, "plugin": "pgoutput", "database": "postgres", "slot_name": "fanout", "slot_type": "logical", "two_phase": false, "wal_status": "unreserved", "active_pid": 123, "restart_lsn": "0/1500000", "safe_wal_size": 5242880, "confirmed_flush_lsn": "0/16B3748"}`
	s, err := parseSlotRow([]byte(pg15))
	if err != nil {
		t.Fatal(err)
	}
	if s.Plugin != "pgoutput" || s.WALStatus != "unreserved" || s.SafeWALSize == nil || *s.SafeWALSize != 5<<20 || s.Confirmed.String() != "0/16B3748" || !s.Active {
		t.Fatalf("parsed %+v", s)
	}
	pg17 := `{"plugin": "pgoutput", "slot_type": "logical", "wal_status": "lost", "safe_wal_size": null, "confirmed_flush_lsn": "0/16B3748", "conflicting": false, "invalidation_reason": "wal_removed", "failover": true}`
	if s, err = parseSlotRow([]byte(pg17)); err != nil {
		t.Fatal(err)
	}
	if s.SafeWALSize != nil || s.InvalidationReason != "wal_removed" || s.WALStatus != "lost" {
		t.Fatalf("parsed %+v", s)
	}
}
