package shapeapi

import (
	"fmt"
	"time"
)

// Kind is what a response is, for its cache headers.
type Kind int

const (
	KindInitial Kind = iota // offset=-1
	KindCatchUp             // other non-live reads
	KindLive                // long poll
	KindSSE                 // server-sent events
	KindRefetch             // 409
	KindError               // other errors
)

// CacheControl is the cache-control header of a response of kind k;
// maxAge and staleAge are api.max_age and api.stale_age.
func CacheControl(k Kind, maxAge, staleAge time.Duration) string {
	switch k {
	case KindInitial:
		return "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
	case KindCatchUp:
		return fmt.Sprintf("public, max-age=%d, stale-while-revalidate=%d", int(maxAge/time.Second), int(staleAge/time.Second))
	case KindLive:
		return "public, max-age=5, stale-while-revalidate=5"
	case KindSSE:
		return "public, max-age=59"
	case KindRefetch:
		return "public, max-age=60, must-revalidate"
	}
	return "no-store"
}

// ETag is the etag of a read: stable for repeated reads of the same range.
func ETag(handle string, requested, last Offset) string {
	return `"` + handle + ":" + requested.String() + ":" + last.String() + `"`
}
