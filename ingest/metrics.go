package ingest

import (
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
	}
	if reg != nil {
		reg.MustRegister(m.Changes, m.Transactions, m.Fragments, m.Messages, m.PublishRetries, m.Inflight,
			m.PublishedLSN, m.ConfirmedLSN, m.SafeLSN, m.Reconnects)
	}
	return m
}
