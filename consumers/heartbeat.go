package consumers

import (
	"context"
	"fmt"
	"time"

	"github.com/fanout/pipeline/fanout"
)

// heartbeat writes this consumer's Heartbeat every heartbeat_interval until
// ctx ends. flushd declares a consumer dead when it stops; failing to write
// for bus_retry_timeout is fatal (flushd has moved the partitions by then).
func (s *Service) heartbeat(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Consumer.HeartbeatInterval)
	defer t.Stop()
	lastOK := time.Now()
	for {
		if err := s.putHeartbeat(ctx, false); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if time.Since(lastOK) > s.cfg.Consumer.BusRetryTimeout {
				return fmt.Errorf("heartbeat to KV bucket %s failing for over %s: %w; check that NATS is reachable",
					fanout.ConsumersBucket, s.cfg.Consumer.BusRetryTimeout, err)
			}
			s.log.Warn("heartbeat failed; flushd will consider this consumer dead if it keeps failing", "err", err)
		} else {
			lastOK = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Service) putHeartbeat(ctx context.Context, draining bool) error {
	hb := &fanout.Heartbeat{Consumer: s.id, Started: s.started, Sent: time.Now(), Draining: draining}
	if !draining {
		hb.Owned = s.owned()
		s.m.owned.Set(float64(len(hb.Owned)))
	} else {
		s.m.owned.Set(0)
	}
	// A put stuck on a NATS leader that just died must not hold back the
	// next attempt for long: flushd counts the time between heartbeats.
	pctx, cancel := context.WithTimeout(ctx, min(max(2*s.cfg.Consumer.HeartbeatInterval, time.Second), 5*time.Second))
	defer cancel()
	_, err := s.bus.Consumers.Put(pctx, s.id, fanout.EncodeJSON(hb))
	return err
}

// sendDraining tells flushd this consumer has released its partitions, so it
// rebinds them at once instead of waiting for the heartbeat timeout.
func (s *Service) sendDraining() {
	if err := s.putHeartbeat(context.Background(), true); err != nil {
		s.log.Warn("could not write the draining heartbeat; flushd will move the partitions after its heartbeat timeout", "err", err)
	}
}
