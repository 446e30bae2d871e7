package flushd

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	safeLSN      prometheus.Gauge
	publishedLSN prometheus.Gauge
	pending      prometheus.Gauge
	blockedFor   prometheus.Gauge
	live         prometheus.Gauge
	rebinds      prometheus.Counter
	stalls       prometheus.Counter
	// removedEvicted counts messages of removed shapes only that flushd
	// deleted from the stream (evictRemoved).
	removedEvicted prometheus.Counter
	slotLag        prometheus.Gauge
	slotExists     prometheus.Gauge
	partition      *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		safeLSN:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_safe_lsn", Help: "Safe LSN published for ingest to confirm (as a number)."}),
		publishedLSN: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_ingest_published_lsn", Help: "Ingest's published LSN as last read (as a number)."}),
		pending:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_pending_fragments", Help: "Messages in the FANOUT stream not yet persisted by a consumer (each holds one or more fragments of one partition; the name is kept from when each held one)."}),
		blockedFor:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_oldest_pending_seconds", Help: "How long the oldest pending message has been the oldest."}),
		live:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_consumers_live", Help: "Consumers with a recent heartbeat that are not draining."}),
		rebinds:      prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_flushd_rebinds_total", Help: "Partition bindings written (new owner or new epoch)."}),
		stalls:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_flushd_stalls_total", Help: "Partitions moved because their live owner made no progress within flushd.stall_grace."}),
		removedEvicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_flushd_removed_shape_messages_deleted_total",
			Help: "Messages holding fragments of removed shapes only, deleted from the stream because their partition's consumer did not drop them within a second."}),
		slotLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_slot_lag_bytes", Help: "pg_current_wal_lsn() - confirmed_flush_lsn of the slot (NaN: no slot, or unknown)."}),
		slotExists: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_flushd_slot_exists",
			Help: "1 when pg_replication_slots has the slot, 0 when it does not (not made yet, or dropped: fanoutctl status says which)."}),
		partition: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fanout_flushd_partition_pending_fragments",
			Help: "Messages of a partition not yet acked by its owner (pending + ack pending of its JetStream consumer)."}, []string{"partition"}),
	}
	m.slotLag.Set(math.NaN()) // unknown until read: never a lag of 0 that was not measured
	reg.MustRegister(m.partition, m.safeLSN, m.publishedLSN, m.pending, m.blockedFor, m.live, m.rebinds, m.stalls, m.removedEvicted, m.slotLag, m.slotExists)
	return m
}
