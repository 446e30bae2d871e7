package shapeapi

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// cursorEpoch is where Electric's live cursors count from.
var cursorEpoch = time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)

// NextCursor is the electric-cursor of a live response at now: seconds since
// 2024-10-09 rounded up to a multiple of 20, or, when that is not past the
// request's cursor, the request's plus 1..3600 (so a CDN never serves a
// cached live response to a client that already saw it).
func NextCursor(now time.Time, previous string) string {
	secs := int64(now.Sub(cursorEpoch) / time.Second)
	next := (secs + 19) / 20 * 20
	if prev, err := strconv.ParseInt(previous, 10, 64); err == nil && next <= prev {
		next = prev + 1 + rand.Int64N(3600)
	}
	return strconv.FormatInt(next, 10)
}
