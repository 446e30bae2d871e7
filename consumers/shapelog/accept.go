package shapelog

import "github.com/fanout/pipeline/fanout"

// acceptor applies the two rules that make a log exact, the same way for the
// writer (which must know where the log stands) and for every reader.
type acceptor struct {
	maxEpoch uint64
	last     fanout.Position
	has      bool // last is set
}

// accept reports whether a record of epoch at pos counts, and records it.
// A record from an older epoch than one already seen is a zombie's write; a
// position that is not after the last accepted one is a duplicate.
func (a *acceptor) accept(epoch uint64, pos fanout.Position) bool {
	if epoch < a.maxEpoch {
		return false
	}
	if a.has && !pos.After(a.last) {
		return false
	}
	a.maxEpoch = epoch
	a.last = pos
	a.has = true
	return true
}

// orphan reports whether f continues a transaction whose earlier fragment the
// log does not hold (a replacement consumer mid-transaction, or a piece that
// was dead-lettered). Call it before accept.
func (a *acceptor) orphan(f *fanout.Fragment) bool {
	if f.Seq == 0 {
		return false
	}
	return !a.has || a.last.CommitLSN != f.CommitLSN || a.last.Seq != f.Seq-1
}
