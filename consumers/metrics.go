package consumers

import "github.com/prometheus/client_golang/prometheus"

// metrics is what a consumer exports on /metrics.
type metrics struct {
	fragments   prometheus.Counter
	changes     prometheus.Counter
	duplicates  prometheus.Counter
	orphans     prometheus.Counter
	reopens     prometheus.Counter
	deadLetters prometheus.Counter
	removedDrop prometheus.Counter
	owned       prometheus.Gauge
	fsync       prometheus.Histogram
	// noticeErrors counts log-grew notices that could not be sent.
	noticeErrors prometheus.Counter
	// quarantined counts shapes set aside because their log is unusable.
	quarantined prometheus.Counter
	// moveOutDeletes counts the deletes put before move-out events.
	moveOutDeletes prometheus.Counter
	// insertsAsUpdates counts inserts of held rows written as updates.
	insertsAsUpdates prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		fragments: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_fragments_persisted_total",
			Help: "Fragments durably appended to shape logs."}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_changes_persisted_total",
			Help: "Row changes in the persisted fragments."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_duplicates_skipped_total",
			Help: "Redelivered or duplicate fragments already in their log, acked without writing."}),
		orphans: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_orphan_fragments_total",
			Help: "Fragments appended without the earlier part of their transaction in the log."}),
		reopens: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_log_reopens_total",
			Help: "Shape logs opened again after being closed as idle (a partition writer keeps storage.max_open_logs open). A high rate means partitions hold many more active shapes than that: each reopen is an open(2)."}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_dead_lettered_total",
			Help: "Messages moved to the dead-letter stream."}),
		removedDrop: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_removed_shape_drops_total",
			Help: "Fragments of removed shapes, acked and dropped."}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_consumer_owned_partitions",
			Help: "Partitions this consumer pulls now."}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fanout_consumer_batch_persist_seconds",
			Help:    "Time to append and fsync one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		noticeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_notice_errors_total",
			Help: "Notices that a shape log grew (for the HTTP API's live requests) that could not be sent."}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_quarantined_shapes_total",
			Help: "Shapes set aside because their log is unusable (their fragments are dead-lettered)."}),
		moveOutDeletes: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_move_out_deletes_total",
			Help: "Deletes written before move-out events of shapes with subqueries, for clients that ignore move events."}),
		insertsAsUpdates: prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_consumer_held_row_inserts_total",
			Help: "Inserts of rows a shape with subqueries already holds (a move-in brought them again) written as whole-row updates."}),
	}
	reg.MustRegister(m.moveOutDeletes, m.insertsAsUpdates, m.quarantined, m.fragments, m.changes, m.duplicates, m.orphans, m.reopens, m.deadLetters, m.removedDrop, m.owned, m.fsync, m.noticeErrors)
	return m
}
