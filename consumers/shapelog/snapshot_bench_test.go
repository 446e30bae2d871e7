package shapelog

import (
	"strconv"
	"testing"

	"github.com/fanout/pipeline/fanout/visibility"
)

// BenchmarkSnapshotWrite writes a 100K-row snapshot of three columns, as a
// snapshot of public.items does: the writer's share of a snapshot's cost
// (encoding, writes, fsyncs), per row.
func BenchmarkSnapshotWrite(b *testing.B) {
	dir := b.TempDir()
	vals := [][]byte{nil, []byte("3"), nil}
	const rows = 100_000
	b.ReportAllocs()
	for gen := uint64(1); b.Loop(); gen++ {
		w, err := NewSnapshotWriter(dir, "bench", gen, "public.items", []string{"id", "owner", "title"}, []string{"id"}, 10000, 4<<20)
		if err != nil {
			b.Fatal(err)
		}
		for i := range rows {
			vals[0] = strconv.AppendInt(vals[0][:0], int64(i), 10)
			vals[2] = strconv.AppendInt(append(vals[2][:0], "title "...), int64(i), 10)
			if err := w.AddValues(vals); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := w.Complete(visibility.Snapshot{Xmin: 1, Xmax: 1}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/row")
}
