package shapelog

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// BenchmarkAppendToManyShapes appends batches of 1-row fragments to the
// 4,700 shapes a partition holds at 300K shapes over 64 partitions, spread
// uniformly, with logs that already exist: per fragment, with the old fixed
// bound of 256 open logs (nearly every write reopens its log) and with every
// log open (what storage.max_open_logs sizes for with a container's
// descriptor limit). The fsyncs are the journal's and the checkpoints', as
// in a consumer.
func BenchmarkAppendToManyShapes(b *testing.B) {
	const shapes, batch = 4_700, 500
	for _, open := range []int{256, 8_192} {
		b.Run(fmt.Sprintf("%d_open", open), func(b *testing.B) {
			st, err := NewFileStore(b.TempDir(), nil)
			if err != nil {
				b.Fatal(err)
			}
			st.SetMaxOpenLogs(open)
			w, err := st.Take(ctx, 0, 1)
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			handles := make([]string, shapes)
			lsn := uint64(100)
			var frags []*fanout.Fragment
			for i := range handles { // every log exists before the timing
				handles[i] = fmt.Sprintf("s%016x", i)
				frags = append(frags, frag(handles[i], lsn, 0, true, ins("id", "1", "title", "a title of some length")))
			}
			if _, err := w.Append(ctx, frags); err != nil {
				b.Fatal(err)
			}
			rng := rand.New(rand.NewSource(1))
			reopened := 0
			b.ResetTimer()
			for n := 0; n < b.N; n += batch {
				lsn++
				frags = frags[:0]
				seen := map[string]bool{}
				for len(frags) < batch {
					if h := handles[rng.Intn(shapes)]; !seen[h] {
						seen[h] = true
						frags = append(frags, frag(h, lsn, 0, true, ins("id", fmt.Sprint(lsn), "title", "a title of some length")))
					}
				}
				s, err := w.Append(ctx, frags)
				if err != nil {
					b.Fatal(err)
				}
				reopened += s.Reopened
			}
			b.ReportMetric(float64(reopened)/float64(b.N), "reopens/fragment")
		})
	}
}
