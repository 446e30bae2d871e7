package shapelog

import (
	"runtime"
	"strconv"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// BenchmarkTagStateMemory reports what a consumer keeps per row of a shape
// with subqueries (moveOuts, consumers/moveout.go): a TagState of 100,000
// rows with one integer key and one tag each.
func BenchmarkTagStateMemory(b *testing.B) {
	const rows = 100_000
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		st := NewTagState([]string{"id"})
		for i := range rows {
			id, p := strconv.Itoa(i), strconv.Itoa(i%100)
			// A tag is an md5 hex digest (match.TagHash): 32 bytes.
			st.Apply(fanout.Change{Op: fanout.OpInsert, Row: fanout.Row{"id": &id, "title": &p},
				Tags: []string{"0123456789abcdef0123456789ab" + p}, Active: []bool{true}})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/rows, "bytes/row")
		runtime.KeepAlive(st)
	}
}
