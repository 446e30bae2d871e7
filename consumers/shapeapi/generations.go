package shapeapi

// Compacted generations (consumers/shapelog/LAYOUT.md) as the API serves
// them. A shape's chain of generations says where each client offset is
// read: a base row of a served generation, or a log position that resumes
// in the generation whose log holds what follows it, and from there through
// the newer logs. An offset in a generation that is no longer served (it
// was replaced more than storage.compaction.retain ago) gets 409, counted
// in fanout_shapeapi_expired_offsets_total: the client starts again from
// the current generation's base.

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/consumers/shapelog"
)

// chainTTL bounds how long a replica reads a shape with a chain loaded
// before. A read that reaches the end of a chain's logs checks for a newer
// generation anyway (Chain.Stale), so an old chain never hides data; the
// TTL bounds how late a replica notices a generation that stopped being
// served.
const chainTTL = time.Second

type chainEntry struct {
	chain  *shapelog.Chain
	loaded time.Time
}

// chainOf returns handle's chain of generations: the cached one unless it
// is older than chainTTL or fresh is set.
func (s *Server) chainOf(handle string, fresh bool) (*shapelog.Chain, error) {
	s.mu.Lock()
	e, _ := s.chains.get(handle)
	s.mu.Unlock()
	if e != nil && !fresh && time.Since(e.loaded) < chainTTL {
		return e.chain, nil
	}
	c, err := shapelog.LoadChain(s.cfg.Storage.Dir, handle)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.chains.put(handle, &chainEntry{chain: c, loaded: time.Now()})
	s.mu.Unlock()
	return c, nil
}

// generation is generation k of the view's shape, served at now, or an
// *ExpiredError.
func (v *shapeView) generation(k uint64) (*shapelog.Generation, error) {
	return v.chain.LocateBase(k, time.Now())
}

// logStartOf is the place before the first entry of generation k's log: a
// client holds it as the offset after k's base (BaseOffset with every row).
func (v *shapeView) logStartOf(k uint64) place {
	var rows int64
	if g := v.chain.Generation(k); g != nil && g.Base != nil {
		rows = g.Base.Rows
	}
	return place{gen: k, fromGen: true, after: BaseOffset(k, rows)}
}

// startGeneration is where a read of the log from p starts: the
// generation p names, or the one whose log holds what follows p's offset.
func (v *shapeView) startGeneration(p place) (*shapelog.Generation, error) {
	if p.fromGen {
		return v.generation(p.gen)
	}
	return v.chain.LocateLog(shapelog.OpOffset{LSN: lsnOf(p.after), Op: p.after.Op}, time.Now())
}

func lsnOf(o Offset) pglogrepl.LSN { return pglogrepl.LSN(o.Tx) }

// expired answers a read from an offset no longer served: 409 with the
// shape's handle (the client starts again from -1), counted.
func (s *Server) expired(w http.ResponseWriter, handle string, err error) {
	s.expiredOffsets.Inc()
	s.log.Info("a client's offset is in a compacted generation that is no longer served (older than storage.compaction.retain); it starts again from the current generation",
		"shape", handle, "err", err)
	s.refetch(w, handle)
}

// isExpired says whether err means a generation is no longer served.
func isExpired(err error) bool { return errors.Is(err, shapelog.ErrExpired) }

// InitialCacheControl is the cache-control of an offset=-1 response. Its
// last offset names a row of the current generation's base, which is
// served until retain after a newer generation replaces it: so a cached
// -1 response (max-age plus stale-while-revalidate, in a browser or a
// CDN) lives at most half of storage.compaction.retain, and a client
// following it has the other half to reach the log.
func InitialCacheControl(retain time.Duration) string {
	life := int(retain / 4 / time.Second)
	return fmt.Sprintf("public, max-age=%d, s-maxage=%d, stale-while-revalidate=%d", life, life, life)
}
