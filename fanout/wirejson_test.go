package fanout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout/visibility"
)

// The hand encoder writes what encoding/json writes (HTML escaping off),
// for fragments with every kind of change, odd strings and NULLs.
func TestHandEncodedFragmentsAreEncodingJSONs(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for n := 0; n < 500; n++ {
		f := randomFragment(rng, n)
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(wireFragment{Fragment: *f, CommitLSN: f.CommitLSN.String(), EndLSN: f.EndLSN.String()}); err != nil {
			t.Fatal(err)
		}
		got, err := appendFragment(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		if string(got)+"\n" != want.String() {
			t.Fatalf("fragment %d:\n got  %s\n want %s", n, got, want.String())
		}
	}
}

func TestParseLSNAgreesWithPglogrepl(t *testing.T) {
	for _, s := range []string{"0/0", "0/1", "16/B374D848", "ffffffff/FFFFFFFF", "a/b"} {
		want, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := parseLSN(s); err != nil || got != want {
			t.Errorf("parseLSN(%q) = %v, %v; want %v", s, got, err, want)
		}
		if got := string(appendLSN(nil, want)); got != want.String() {
			t.Errorf("appendLSN(%v) = %s, want %s", want, got, want.String())
		}
	}
	for _, s := range []string{"", "/", "1/", "/1", "1", "g/1", "1/1/1", "123456789/0", "-1/0", "+1/0", " 1/0", "0x1/0", "1_0/0"} {
		if _, err := parseLSN(s); err == nil {
			t.Errorf("parseLSN(%q) accepted", s)
		}
	}
}

// randomFragment is a fragment with every kind of change, odd strings and
// NULLs, not always a valid one (an insert may lack its row).
func randomFragment(rng *rand.Rand, n int) *Fragment {
	strs := []string{"", "x", "q\"\\", "\n\x01", "ü€", "\u2028", "bad\xff", "</a>&", "a/b"}
	val := func() Value {
		if rng.Intn(5) == 0 {
			return nil
		}
		s := strs[rng.Intn(len(strs))] + fmt.Sprint(rng.Intn(100))
		return &s
	}
	row := func() Row {
		r := Row{}
		for i := rng.Intn(6); i >= 0; i-- {
			r[strs[rng.Intn(len(strs))]+fmt.Sprint(i)] = val()
		}
		return r
	}
	f := &Fragment{Version: WireVersion, Shape: "s" + fmt.Sprint(n), Xid: rng.Uint32(),
		CommitLSN: pglogrepl.LSN(rng.Uint64()), EndLSN: pglogrepl.LSN(rng.Uint64() >> uint(rng.Intn(64))),
		CommitTime: time.Unix(rng.Int63n(4e9), rng.Int63n(1e9)).In(time.FixedZone("z", 3600*rng.Intn(3))),
		Seq:        rng.Intn(10), Last: rng.Intn(2) == 0}
	if n%7 != 0 {
		f.Changes = []Change{}
	}
	for i := rng.Intn(4); i > 0 && f.Changes != nil; i-- {
		c := Change{Op: []Op{OpInsert, OpUpdate, OpDelete, OpTruncate}[rng.Intn(4)]}
		if rng.Intn(3) > 0 {
			c.Row = row()
		}
		if rng.Intn(2) == 0 {
			c.Old = row()
		}
		if rng.Intn(2) == 0 {
			c.Before = row()
		}
		if rng.Intn(3) == 0 { // the fields of subquery shapes (moves.go)
			c.Tags = []string{strs[rng.Intn(len(strs))], "1/" + fmt.Sprint(rng.Intn(9))}
			c.RemovedTags = c.Tags[:rng.Intn(2)]
			c.Active = []bool{rng.Intn(2) == 0, true}[:rng.Intn(3)]
			c.MoveIn = rng.Intn(2) == 0
			if rng.Intn(2) == 0 {
				c.Patterns = []Pattern{{Pos: rng.Intn(3), Value: strs[rng.Intn(len(strs))]}}
			}
			if rng.Intn(2) == 0 {
				c.Snapshot = &visibility.Snapshot{Xmin: rng.Uint64(), Xmax: rng.Uint64(), Xip: []uint64{rng.Uint64()}[:rng.Intn(2)]}
			}
		}
		f.Changes = append(f.Changes, c)
	}
	f.OpensWindow = rng.Intn(4) == 0
	f.ClosesWindows = rng.Intn(3)
	return f
}

// A time JSON cannot carry is an error, as it is for encoding/json.
func TestEncodeRefusesAYearOutsideRFC3339(t *testing.T) {
	f := &Fragment{Version: WireVersion, Shape: "s1", CommitLSN: 1, CommitTime: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
	if _, err := json.Marshal(f.CommitTime); err == nil {
		t.Fatal("encoding/json writes year 10000: the hand encoder's rule is out of date")
	}
	if _, err := f.Encode(); err == nil || !strings.Contains(err.Error(), "year 10000") {
		t.Fatalf("Encode of year 10000: %v", err)
	}
}
