package match

import (
	"fmt"
	"math/rand"
	"runtime"
	"strconv"
	"testing"

	"github.com/fanout/pipeline/fanout"
)

// The registry at the scale of the benchmark targets (BENCHMARKS.md): 300K
// `owner = i` shapes must route as fast as 1K and cost little memory each.

// ownerShapes adds n `owner = i` shapes as deploy/bench defines them.
func ownerShapes(tb testing.TB, r *Registry, n int) {
	schema := []fanout.Column{{Name: "id", Type: "bigint", OID: 20}, {Name: "owner", Type: "integer", OID: 23}, {Name: "title", Type: "text", OID: 25}}
	for i := 0; i < n; i++ {
		s := &fanout.Shape{Handle: fmt.Sprintf("bench%06d", i), Table: "public.items", Where: fmt.Sprintf("owner = %d", i),
			PrimaryKey: []string{"id"}, Schema: schema}
		if err := r.Add(s); err != nil {
			tb.Fatal(err)
		}
	}
}

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkShapeMemory reports the live heap each added `owner = i` shape
// costs, the definition included (ingest keeps the decoded definitions in
// its registry). One iteration is enough: run with -benchtime 1x.
func BenchmarkShapeMemory(b *testing.B) {
	const n = 300_000
	for i := 0; i < b.N; i++ {
		before := liveHeap()
		r := NewRegistry()
		ownerShapes(b, r, n)
		after := liveHeap()
		b.ReportMetric(float64(after-before)/n, "B/shape")
		runtime.KeepAlive(r)
	}
}

// BenchmarkRouteOwners is deploy/bench's BenchmarkRouting as a Go benchmark
// (inserts of 4,096 rows with random owners), for profiles. The 4,096 rows
// touch every shape of the 1K registry but about 4K distinct shapes of the
// 300K one, so the two cases differ in the working set as well as in the
// registry's size (shapes-touched reports it); two more cases separate the
// two: 300K/touch1K routes rows whose owners are 1K of the 300K shapes, 4K
// a registry of 4,096 shapes with random owners.
func BenchmarkRouteOwners(b *testing.B) {
	for _, c := range []struct {
		name           string
		shapes, owners int
	}{{"1K", 1_000, 1_000}, {"4K", 4_096, 4_096}, {"300K", 300_000, 300_000}, {"300K/touch1K", 300_000, 1_000}} {
		b.Run(c.name, func(b *testing.B) {
			r := ownerRegistries[c.shapes]
			if r == nil {
				r = NewRegistry()
				ownerShapes(b, r, c.shapes)
				ownerRegistries[c.shapes] = r
			}
			rows := ownerRows(4096, c.owners, c.shapes)
			routeInserts(b, r, rows)
			b.ReportMetric(float64(distinctOwners(rows)), "shapes-touched")
		})
	}
}

var ownerRegistries = map[int]*Registry{}

// ownerRows are n rows whose owners are `owners` distinct values spread
// over [0, shapes), as deploy/bench draws them.
func ownerRows(n, owners, shapes int) []fanout.Row {
	rng := rand.New(rand.NewSource(1))
	rows := make([]fanout.Row, n)
	for i := range rows {
		id, owner, title := strconv.Itoa(i), strconv.Itoa(rng.Intn(owners)*(shapes/owners)), "title "+strconv.Itoa(i)
		rows[i] = fanout.Row{"id": &id, "owner": &owner, "title": &title}
	}
	return rows
}

func distinctOwners(rows []fanout.Row) int {
	seen := map[string]bool{}
	for _, r := range rows {
		seen[*r["owner"]] = true
	}
	return len(seen)
}
