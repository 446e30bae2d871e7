package ingest

import (
	"testing"

	"github.com/jackc/pglogrepl"
)

// Acks arriving out of order move the published LSN only over the
// contiguous prefix of fully acked, committed transactions.
func TestTrackerOutOfOrderAcks(t *testing.T) {
	tr := NewTracker(100)
	a, b, c := tr.Begin(), tr.Begin(), tr.Begin()
	a.Add()
	a.Add()
	a.Commit(200)
	b.Add()
	b.Commit(300)
	c.Commit(400) // touched no shape

	b.Done()
	a.Done()
	if got := tr.Published(); got != 100 {
		t.Fatalf("published = %s with one publish of the first transaction unacked, want 0/64", got)
	}
	a.Done()
	if got := tr.Published(); got != 400 {
		t.Fatalf("published = %s after all acks, want %s", got, pglogrepl.LSN(400))
	}
	if tr.Open() != 0 {
		t.Fatalf("%d transactions still open", tr.Open())
	}
}

// A transaction that is still open (no Commit) holds back the ones after it
// even when they are acked, and an uncommitted one never counts.
func TestTrackerOpenTransactionHoldsBack(t *testing.T) {
	tr := NewTracker(0)
	a := tr.Begin()
	a.Add()
	a.Done()
	if tr.Published() != 0 {
		t.Fatal("an uncommitted transaction moved the published LSN")
	}
	a.Commit(50)
	if tr.Published() != 50 {
		t.Fatalf("published = %s, want 0/32", tr.Published())
	}
}

// A transaction that touched no shape completes at once.
func TestTrackerEmptyTransactionCompletesAtOnce(t *testing.T) {
	tr := NewTracker(10)
	tr.Begin().Commit(20)
	if tr.Published() != 20 {
		t.Fatalf("published = %s, want 0/14", tr.Published())
	}
	select {
	case <-tr.Changed():
	default:
		t.Fatal("Changed was not signalled")
	}
}

// Keepalive WAL end moves the published LSN only when nothing is open.
func TestTrackerIdle(t *testing.T) {
	tr := NewTracker(10)
	x := tr.Begin()
	x.Add()
	x.Commit(20)
	if tr.Idle(500) {
		t.Fatal("Idle moved the published LSN past an unacked transaction")
	}
	x.Done()
	if !tr.Idle(500) || tr.Published() != 500 {
		t.Fatalf("Idle did not move to the WAL end: %s", tr.Published())
	}
	if tr.Idle(400) || tr.Published() != 500 {
		t.Fatal("Idle moved the published LSN backwards")
	}
}

// A broken session's open transaction is dropped; committed ones still count.
func TestTrackerAbandon(t *testing.T) {
	tr := NewTracker(0)
	a := tr.Begin()
	a.Add()
	a.Commit(30)
	open := tr.Begin()
	open.Add()
	tr.Abandon()
	if tr.Open() != 1 {
		t.Fatalf("open = %d after Abandon, want the committed one only", tr.Open())
	}
	a.Done()
	open.Done() // a late ack of the dropped transaction is harmless
	if tr.Published() != 30 || tr.Open() != 0 {
		t.Fatalf("published = %s open = %d", tr.Published(), tr.Open())
	}
}

// The position sent to Postgres never passes the safe LSN nor goes back.
func TestConfirmNeverPassesSafe(t *testing.T) {
	cases := []struct{ prev, safe, published, want pglogrepl.LSN }{
		{100, 50, 500, 100},  // never back
		{100, 300, 500, 300}, // safe limits
		{100, 900, 500, 500}, // published limits
		{100, 0, 500, 100},   // no safe LSN yet
	}
	for _, c := range cases {
		if got := Confirm(c.prev, c.safe, c.published); got != c.want {
			t.Errorf("Confirm(%d, %d, %d) = %d, want %d", c.prev, c.safe, c.published, got, c.want)
		}
	}
}

// While one transaction's publish is being retried, every transaction after
// it that touched no shape is complete at once; they must not pile up one
// entry each (a busy database commits thousands a second).
func TestTrackerCoalescesCompleteTransactionsBehindARetriedOne(t *testing.T) {
	tr := NewTracker(0)
	stuck := tr.Begin()
	stuck.Add() // its publish is being retried
	stuck.Commit(100)
	for i := 1; i <= 10000; i++ {
		tr.Begin().Commit(pglogrepl.LSN(100 + i))
	}
	if n := tr.Open(); n > 2 {
		t.Fatalf("%d transactions queued behind the retried one, want them coalesced into one", n)
	}
	if got := tr.Published(); got != 0 {
		t.Fatalf("published = %s with the first transaction unacked, want 0/0", got)
	}
	// A transaction with a publish of its own keeps its place behind them.
	x := tr.Begin()
	x.Add()
	x.Commit(20000)
	stuck.Done()
	if got := tr.Published(); got != 10100 {
		t.Fatalf("published = %s after the retried publish was acked, want %s", got, pglogrepl.LSN(10100))
	}
	x.Done()
	if got := tr.Published(); got != 20000 || tr.Open() != 0 {
		t.Fatalf("published = %s, open %d after every ack; want %s, 0", got, tr.Open(), pglogrepl.LSN(20000))
	}
}
