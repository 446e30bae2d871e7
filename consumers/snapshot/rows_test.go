package snapshot

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
)

// rowFilter reuses one map and aliases the wire buffer; what it accepts and
// stores must be exactly what the matcher decides on a fresh row, whatever
// the rows before (NULLs coming and going, buffers overwritten).
func TestRowFilterIsTheMatcher(t *testing.T) {
	schema := []fanout.Column{{Name: "id", Type: "bigint", OID: 20}, {Name: "owner", Type: "integer", OID: 23}, {Name: "title", Type: "text", OID: 25}}
	cols := []string{"id", "owner", "title"}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, where := range []string{"", "owner = 3", "owner IS NULL OR title LIKE 'a%'", "id > owner AND title IS NOT NULL", "true", "1 = 2", "coalesce(title, 'z') = 'z'"} {
		pred, err := match.Compile(where, schema)
		if err != nil {
			t.Fatal(err)
		}
		for _, stored := range [][]string{cols, {"title", "id"}} {
			f := newRowFilter(pred, cols, stored)
			buf := make([]byte, 0, 64)
			accepted := 0
			for range 2000 {
				// One buffer for every row, as the wire's: each row overwrites it.
				buf = buf[:0]
				raw := make([][]byte, len(cols))
				want := fanout.Row{}
				for i, c := range cols {
					if rng.IntN(4) == 0 {
						want[c] = nil
						continue
					}
					var v string
					switch c {
					case "title":
						v = []string{"a", "ab", "b", "", "z"}[rng.IntN(5)]
					default:
						v = fmt.Sprint(rng.IntN(6))
					}
					start := len(buf)
					buf = append(buf, v...)
					raw[i] = buf[start:len(buf):len(buf)]
					want[c] = &v
				}
				out, ok := f.accept(raw)
				if ok != pred.Eval(want) {
					t.Fatalf("where %q, row %v: accept says %v, the matcher %v", where, render(want), ok, !ok)
				}
				if !ok {
					continue
				}
				accepted++
				for i, c := range stored {
					if w := want[c]; (w == nil) != (out[i] == nil) || w != nil && *w != string(out[i]) {
						t.Fatalf("where %q, row %v: stored %q = %q", where, render(want), c, out[i])
					}
				}
			}
			if where == "1 = 2" && accepted > 0 || where == "" && accepted != 2000 {
				t.Fatalf("where %q accepted %d of 2000 rows", where, accepted)
			}
		}
	}
}

func render(r fanout.Row) string {
	var keys []string
	for k := range r {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s := ""
	for _, k := range keys {
		if r[k] == nil {
			s += k + "=NULL "
		} else {
			s += k + "=" + *r[k] + " "
		}
	}
	return s
}
