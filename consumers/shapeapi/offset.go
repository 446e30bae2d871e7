// Package shapeapi serves shape logs over Electric's HTTP shape API
// (ELECTRIC_API.md), so the unmodified Electric clients sync shapes. The
// protocol pieces (offsets, messages, keys, the schema header, chunks,
// cursors, cache headers, request parsing) are plain functions over log
// entries; server.go is the thin HTTP layer over them.
package shapeapi

import (
	"cmp"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// Offset is a place in a shape's log as clients see it: "<tx>_<op>" compared
// as integers, or -1 before everything. Changes sit at <commit LSN>_<op>;
// places in a shape's base (its initial snapshot or a compacted base) have
// tx 0 (BaseOffset; consumers/shapelog/LAYOUT.md lists every form), and
// "<tx>_inf" is after every op of tx ("0_inf": after the base).
type Offset struct {
	Tx, Op uint64
	// Start is the offset -1, before everything.
	Start bool
}

// InfOp is the op of "<tx>_inf".
const InfOp = math.MaxUint64

// Offsets in a base (tx 0): op below legacyChunks names a stored snapshot
// chunk ("0_i": after chunk i, what earlier versions handed out); an op
// with baseRowFlag set names a row: generation g's base after its first r
// rows. Every offset stays within int64, as clients' offsets are checked
// to (bounds.go).
const (
	legacyChunks = 1 << 32
	baseRowFlag  = 1 << 62
	baseRowBits  = 40
	baseGenBits  = 22
)

// BaseOffset is the offset after the first rows rows of generation gen's base
// (gen below 2^22, rows below 2^40).
func BaseOffset(gen uint64, rows int64) Offset {
	return Offset{Op: baseRowFlag | gen<<baseRowBits | uint64(rows)}
}

// baseRow reads a row offset of a base: ok is false for any other offset.
func (o Offset) baseRow() (gen uint64, rows int64, ok bool) {
	if o.Start || o.Tx != 0 || o.Op&baseRowFlag == 0 || o.Op == InfOp {
		return 0, 0, false
	}
	return (o.Op >> baseRowBits) & (1<<baseGenBits - 1), int64(o.Op & (1<<baseRowBits - 1)), true
}

// StartOffset is "-1".
var StartOffset = Offset{Start: true}

// opBits leaves room for the ops of one fragment: the changes of fragment
// Seq of a transaction get ops from Seq<<opBits, two per change (a key change
// is a delete and an insert), so an op is known from a log position alone,
// without counting the changes of earlier fragments. A fragment holds far
// fewer than 2^23 changes (NATS payloads are bounded).
const opBits = 24

// FirstOp is the first op of the fragment at pos.
func FirstOp(pos fanout.Position) Offset {
	return Offset{Tx: uint64(pos.CommitLSN), Op: uint64(pos.Seq) << opBits}
}

// LastOp is an offset at or after every op of the fragment at pos.
func LastOp(pos fanout.Position) Offset {
	return Offset{Tx: uint64(pos.CommitLSN), Op: uint64(pos.Seq+1)<<opBits - 1}
}

// LSNOffset is "<lsn>_0", where the 1.5 client resumes after an SSE batch.
func LSNOffset(lsn pglogrepl.LSN) Offset { return Offset{Tx: uint64(lsn)} }

func (o Offset) String() string {
	if o.Start {
		return "-1"
	}
	if o.Op == InfOp {
		return strconv.FormatUint(o.Tx, 10) + "_inf"
	}
	return strconv.FormatUint(o.Tx, 10) + "_" + strconv.FormatUint(o.Op, 10)
}

// Compare orders offsets; -1 is before everything.
func (o Offset) Compare(p Offset) int {
	switch {
	case o.Start && p.Start:
		return 0
	case o.Start:
		return -1
	case p.Start:
		return 1
	}
	return cmp.Or(cmp.Compare(o.Tx, p.Tx), cmp.Compare(o.Op, p.Op))
}

// After reports whether o comes strictly after p.
func (o Offset) After(p Offset) bool { return o.Compare(p) > 0 }

// ParseOffset reads the offset parameter: "-1", "now" (now is true),
// "<tx>_<op>" or "<tx>_inf".
func ParseOffset(s string) (o Offset, now bool, err error) {
	switch s {
	case "-1":
		return StartOffset, false, nil
	case "now":
		return Offset{}, true, nil
	}
	tx, op, ok := strings.Cut(s, "_")
	if ok {
		t, err1 := strconv.ParseUint(tx, 10, 64)
		p, err2 := strconv.ParseUint(op, 10, 64)
		if op == "inf" {
			p, err2 = InfOp, nil
		}
		if err1 == nil && err2 == nil {
			return Offset{Tx: t, Op: p}, false, nil
		}
	}
	return Offset{}, false, fmt.Errorf("has invalid format")
}
