package shapeapi

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// The numbers a client sends back are bounded where they are read, so
// that no arithmetic on them wraps: an offset part or a cursor past these
// limits is a 400, never an offset or cursor that silently means another.
const (
	// maxOffsetPart bounds each of an offset's <tx> and <op>: int64's
	// range, far above any LSN (8 EiB of WAL) or operation index, so that
	// adding one or converting to int never wraps.
	maxOffsetPart = math.MaxInt64
	// maxCursor bounds a live cursor (seconds, about 10^8 today): below
	// 2^53 it stays exact in the JavaScript clients, and adding the random
	// step of NextCursor never wraps.
	maxCursor = 1 << 53
)

// offsetInRange checks the numeric parts of an offset as sent ("-1",
// "now" and other forms are ParseOffset's).
func offsetInRange(s string) error {
	tx, op, ok := strings.Cut(s, "_")
	if !ok {
		return nil
	}
	for i, part := range []string{tx, op} {
		if !allDigits(part) {
			continue
		}
		n, err := strconv.ParseUint(part, 10, 64)
		if err == nil && i == 1 && tx == "0" && n&baseRowFlag != 0 {
			// A row of a base (BaseOffset, bit 63 set; locate bounds its
			// generation and row), or all ones, which is 0_inf.
			continue
		}
		if err != nil || n > maxOffsetPart {
			return fmt.Errorf("is out of range (each part of <tx>_<op> is at most %d)", uint64(maxOffsetPart))
		}
	}
	return nil
}

// cursorInRange checks a cursor that is a number; other text is ignored, as
// before (clients only echo the cursor they were given).
func cursorInRange(s string) error {
	if !allDigits(s) {
		return nil
	}
	if n, err := strconv.ParseUint(s, 10, 64); err != nil || n >= maxCursor {
		return fmt.Errorf("is out of range (at most %d)", uint64(maxCursor-1))
	}
	return nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// noNUL refuses text Postgres cannot hold: a NUL byte in a where clause or
// a parameter fails every query that binds it, so it is a 400 at once
// rather than a shape whose snapshot fails for ever.
func noNUL(s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("holds a NUL byte, which Postgres text cannot hold")
	}
	return nil
}
