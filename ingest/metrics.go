package ingest

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are ingest's Prometheus series.
type Metrics struct {
	Changes        prometheus.Counter
	Transactions   prometheus.Counter
	Fragments      prometheus.Counter
	Messages       prometheus.Counter
	PublishRetries prometheus.Counter
	Inflight       prometheus.Gauge
	PublishedLSN   prometheus.Gauge
	ConfirmedLSN   prometheus.Gauge
	SafeLSN        prometheus.Gauge
	Reconnects     prometheus.Counter

	// Replication continuity (guarantee 7).
	Resets        *prometheus.CounterVec
	Broken        prometheus.Gauge
	Resyncing     prometheus.Gauge
	SlotAtRisk    prometheus.Gauge
	SlotSafeWAL   prometheus.Gauge
	MissingTables prometheus.Gauge
}

// NewMetrics registers ingest's series on reg (nil: unregistered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Changes:        prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_changes_decoded_total", Help: "Row changes decoded from pgoutput."}),
		Transactions:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_transactions_total", Help: "Transactions decoded (committed)."}),
		Fragments:      prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_fragments_published_total", Help: "Fragments acked by JetStream (duplicates included)."}),
		Messages:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_messages_published_total", Help: "Bus messages acked by JetStream, each carrying one partition's fragments (duplicates included)."}),
		PublishRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_publish_retries_total", Help: "Publishes sent again after a failure."}),
		Inflight:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_inflight_publishes", Help: "Publishes awaiting a JetStream ack."}),
		PublishedLSN:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_published_lsn", Help: "LSN through which every transaction is in JetStream."}),
		ConfirmedLSN:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_confirmed_lsn", Help: "LSN last confirmed to Postgres (standby status flush position)."}),
		SafeLSN:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_safe_lsn", Help: "Safe LSN last read from flushd."}),
		Reconnects:     prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_ingest_reconnects_total", Help: "Replication sessions restarted after a failure."}),

		Resets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fanout_ingest_replication_resets_total",
			Help: "Breaks of replication continuity recovered by replacing the affected shapes, by cause (slot_missing, slot_invalidated, slot_moved, slot_replaced, failover, new_system, publication_missing, publication_recreated, table_left_publication)."}, []string{"cause"}),
		Broken: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_continuity_broken",
			Help: "1 while the replication stream's continuity is broken and not yet recovered (shapes in scope are stale and not served as up to date)."}),
		Resyncing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_shapes_resyncing",
			Help: "Shapes replaced by the last continuity reset whose new snapshot is not ready yet."}),
		SlotAtRisk: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_slot_wal_at_risk",
			Help: "1 while the slot risks losing WAL it needs: wal_status past reserved, or safe_wal_size under ingest.safe_wal_warn_bytes."}),
		SlotSafeWAL: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_slot_safe_wal_bytes",
			Help: "The slot's safe_wal_size: WAL that can still be written before Postgres invalidates it (NaN: unlimited or unknown)."}),
		MissingTables: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_ingest_tables_missing_from_publication",
			Help: "Tables that shapes use but the publication does not publish (their shapes get no changes)."}),
	}
	for _, c := range []string{CauseSlotMissing, CauseSlotInvalidated, CauseSlotMoved, CauseSlotReplaced, CauseFailover,
		CauseNewSystem, CausePublicationMissing, CausePublicationRecreated, CauseTableLeftPublication} {
		m.Resets.WithLabelValues(c) // every cause at 0, so an alert on increase sees the first one
	}
	m.SlotSafeWAL.Set(math.NaN())
	if reg != nil {
		reg.MustRegister(m.Changes, m.Transactions, m.Fragments, m.Messages, m.PublishRetries, m.Inflight,
			m.PublishedLSN, m.ConfirmedLSN, m.SafeLSN, m.Reconnects,
			m.Resets, m.Broken, m.Resyncing, m.SlotAtRisk, m.SlotSafeWAL, m.MissingTables)
	}
	return m
}
