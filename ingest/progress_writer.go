package ingest

import (
	"context"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

// writeProgress writes the published LSN for flushd when it moves (at most
// every progress_interval) and at least every status_interval when idle.
func (s *Service) writeProgress(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.Ingest.ProgressInterval)
	defer tick.Stop()
	var written pglogrepl.LSN
	var at time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		p := s.tracker.Published()
		s.metrics.PublishedLSN.Set(float64(p))
		if p == written && time.Since(at) < s.cfg.Postgres.StatusInterval {
			continue
		}
		if err := s.putProgress(ctx, p); err != nil {
			s.log.Warn("cannot write the published LSN to the state bucket; retrying", "err", err)
			continue
		}
		written, at = p, time.Now()
	}
}

func (s *Service) writeProgressOnce(ctx context.Context) {
	if err := s.putProgress(ctx, s.tracker.Published()); err != nil {
		s.log.Warn("cannot write the final published LSN to the state bucket", "err", err)
	}
}

// progressPutTimeout bounds one write of the published LSN. A put answers in
// milliseconds when NATS is healthy; one sent to a node that just failed
// gets no answer, and the next tick should try again soon rather than hold
// flushd's view of ingest still.
const progressPutTimeout = 2 * time.Second

func (s *Service) putProgress(ctx context.Context, p pglogrepl.LSN) error {
	pctx, cancel := context.WithTimeout(ctx, progressPutTimeout)
	defer cancel()
	_, err := s.bus.State.Put(pctx, fanout.KeyIngestPublished, fanout.EncodeJSON(&fanout.IngestProgress{PublishedLSN: p, Updated: time.Now().UTC()}))
	return err
}
