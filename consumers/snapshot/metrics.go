package snapshot

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rows, bytes, completed, failed, retakes, restarted, reconnects prometheus.Counter
	running, concurrency                                           prometheus.Gauge
	groups, splits                                                 prometheus.Counter
	groupShapes                                                    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "fanout_snapshot_" + name, Help: help})
	}
	m := &metrics{
		rows:       c("rows_total", "Rows written to shape snapshots by this replica."),
		bytes:      c("bytes_total", "Bytes written to shape snapshots by this replica."),
		completed:  c("completed_total", "Snapshots completed (shape ready)."),
		failed:     c("failed_total", "Snapshot generations that failed (the shape retries or is marked failed)."),
		retakes:    c("retakes_total", "Snapshots retaken because a commit already routed was still invisible."),
		restarted:  c("restarted_total", "Generations abandoned by a TRUNCATE or schema change, or taken over from a dead runner."),
		reconnects: c("reconnects_total", "Snapshot attempts taken again on a new connection after Postgres could not be reached or the connection broke (not counted against snapshot.max_attempts)."),
		running:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_snapshot_running", Help: "Snapshots this replica is taking now."}),
		concurrency: prometheus.NewGauge(prometheus.GaugeOpts{Name: "fanout_snapshot_concurrency",
			Help: "Snapshot groups this replica takes at once: snapshot.concurrency, or fewer when Postgres has few connections free."}),
		groups: c("groups_total", "Snapshot groups started: shapes of one table read in one transaction and one query."),
		splits: c("group_splits_total", "Snapshot groups whose transaction or query failed and whose shapes were then taken one by one."),
		groupShapes: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fanout_snapshot_group_shapes", Help: "Shapes per snapshot group (at most snapshot.group_shapes).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}}),
	}
	if reg != nil {
		reg.MustRegister(m.rows, m.bytes, m.completed, m.failed, m.retakes, m.restarted, m.reconnects, m.running, m.concurrency, m.groups, m.splits, m.groupShapes)
	}
	return m
}
