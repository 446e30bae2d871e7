package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/flushd"
)

// slotError says why the slot could not be read, and for a missing slot
// what ingest makes of it: not made yet (no first start), or a break of
// continuity it reports and recovers from.
func slotError(err error, published bool, c *fanout.Continuity) string {
	if !errors.Is(err, flushd.ErrSlotMissing) {
		return err.Error()
	}
	switch {
	case !published:
		return err.Error() + " (ingest has not streamed yet: it makes the slot on its first start)"
	case c != nil && c.State == fanout.Broken && c.Break.AllTables():
		return err.Error() + " (ingest reported the break: " + c.Break.Cause + ", see continuity)"
	}
	return err.Error() + " although ingest streamed from it: it was dropped; ingest resyncs every shape from a new slot when it next checks (ingest.on_continuity_break)"
}

// printContinuity prints ingest's continuity report: the state, the slot's
// warning, the last reset and how many of its shapes still resync.
func printContinuity(w io.Writer, c *fanout.Continuity) {
	if c == nil {
		fmt.Fprintf(w, "continuity\tunknown\t(no report from ingest yet)\n")
		return
	}
	ago := func(t time.Time) string { return time.Since(t).Round(100*time.Millisecond).String() + " ago" }
	switch c.State {
	case fanout.Broken:
		scope := "every shape is stale"
		if !c.Break.AllTables() {
			scope = "shapes of " + strings.Join(c.Break.Tables, ", ") + " are stale"
		}
		fmt.Fprintf(w, "continuity\tBROKEN since %s\t%s: %s; %s and not served as up to date until resynced\n", ago(c.Break.At), c.Break.Cause, c.Break.Detail, scope)
	case fanout.Resyncing:
		fmt.Fprintf(w, "continuity\tresyncing\t%d shapes resyncing (new snapshots not ready yet), since %s\n", c.LastReset.Resyncing, ago(c.Since))
	default:
		fmt.Fprintf(w, "continuity\tcontinuous\t(checked %s)\n", ago(c.Checked))
	}
	if c.Warning != "" {
		fmt.Fprintf(w, "slot at risk\tWARNING\t%s\n", c.Warning)
	}
	r := c.LastReset
	if r == nil {
		return
	}
	slot := "kept the slot"
	if r.NewSlotLSN != "" {
		slot = "new slot at " + r.NewSlotLSN
	}
	done := "resync not complete"
	if !r.ResyncedAt.IsZero() {
		done = "resynced in " + r.ResyncedAt.Sub(r.At).Round(100*time.Millisecond).String() + " from the break"
	}
	fmt.Fprintf(w, "last reset\t%s (%d in all)\t%s: %s; published %s, slot at %s; %s; %d shapes replaced, %d failed; %s\n",
		ago(r.ResetAt), c.Resets, r.Cause, r.Detail, orNone(r.Published), orNone(r.SlotLSN), slot, r.Replaced, r.Failed, done)
	for _, x := range r.Examples {
		fmt.Fprintf(w, "replaced shape\t%s\tby %s\n", x.Old, x.New)
	}
	if n := r.Replaced - len(r.Examples); n > 0 {
		fmt.Fprintf(w, "replaced shape\t... %d more\t(fanoutctl shape ls lists the shapes)\n", n)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
