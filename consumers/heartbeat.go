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
//
// Each heartbeat carries the highest epoch storage holds (see
// fanout.Heartbeat.StorageEpoch): read from storage before the first one,
// raised by the epochs this consumer owns since. Storage is not read again
// on the heartbeat's path, so a hung disk does not silence heartbeats.
func (s *Service) heartbeat(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Consumer.HeartbeatInterval)
	defer t.Stop()
	lastOK := time.Now()
	var top uint64
	scanned := false
	for {
		if !scanned {
			var err error
			if top, err = s.storageEpoch(); err != nil {
				s.log.Warn("cannot read the owner epochs in storage; heartbeats carry only the epochs owned here until it can (check storage.dir)", "err", err)
			} else {
				scanned = true
			}
		}
		if err := s.putHeartbeat(ctx, false, &top); err != nil {
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

// epochReporter is a Store that can say the highest epoch it holds.
type epochReporter interface {
	HighestEpoch() (uint64, error)
}

func (s *Service) storageEpoch() (uint64, error) {
	r, ok := s.store.(epochReporter)
	if !ok {
		return 0, nil
	}
	return r.HighestEpoch()
}

// putHeartbeat writes one heartbeat; top is the highest storage epoch known,
// raised here by the epochs owned now.
func (s *Service) putHeartbeat(ctx context.Context, draining bool, top *uint64) error {
	hb := &fanout.Heartbeat{Consumer: s.id, Started: s.started, Sent: time.Now(), Draining: draining}
	if !draining {
		hb.Owned = s.owned()
		s.m.owned.Set(float64(len(hb.Owned)))
	} else {
		s.m.owned.Set(0)
	}
	for _, epoch := range hb.Owned {
		*top = max(*top, epoch)
	}
	hb.StorageEpoch = *top
	if s.compactor != nil {
		hb.Compaction = s.compactor.Status()
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
	top, err := s.storageEpoch() // the workers have stopped: storage is read once more
	if err != nil {
		s.log.Warn("cannot read the owner epochs in storage for the draining heartbeat", "err", err)
	}
	if err := s.putHeartbeat(context.Background(), true, &top); err != nil {
		s.log.Warn("could not write the draining heartbeat; flushd will move the partitions after its heartbeat timeout", "err", err)
	}
}
