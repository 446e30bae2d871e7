package fanout

import (
	"bytes"
	"math/rand"
	"reflect"
	"testing"
)

// The one-pass reader (wirecheck.go) must read every message ingest writes,
// and whatever it accepts, encoding/json must read the same way: it may
// only hand a message over to encoding/json, never accept one that the
// general path refuses or reads differently.
func TestCanonicalReadingAgreesWithEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	var bodies [][]byte
	for n := 0; n < 400; n++ {
		body, err := randomFragment(rng, n).Encode()
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, body)
	}

	// Every fragment ingest writes takes the one-pass path, valid or not.
	valid := 0
	for _, body := range bodies {
		want, err := DecodeFragment(body)
		got, ok := checkCanonicalFragment(body)
		if ok != (err == nil) {
			t.Fatalf("canonical fragment read %v, DecodeFragment error %v:\n%s", ok, err, body)
		}
		if ok {
			valid++
			sameChecked(t, got, want, body)
		}
	}
	if valid < len(bodies)/4 {
		t.Fatalf("only %d of %d random fragments are valid: the test checks too little", valid, len(bodies))
	}

	// Mutated fragments: what the one-pass reader accepts, DecodeFragment
	// accepts and reads the same.
	accepted, handedOver := 0, 0
	for i := 0; i < 40_000; i++ {
		body := mutate(rng, bodies[rng.Intn(len(bodies))])
		want, err := DecodeFragment(body)
		got, ok := checkCanonicalFragment(body)
		switch {
		case ok && err != nil:
			t.Fatalf("one-pass reader accepted a fragment DecodeFragment refuses (%v):\n%q", err, body)
		case ok:
			accepted++
			sameChecked(t, got, want, body)
		case err == nil:
			handedOver++
		}
	}
	t.Logf("mutated fragments: %d accepted by both, %d valid but handed over to encoding/json", accepted, handedOver)
	if accepted == 0 || handedOver == 0 {
		t.Fatalf("the mutations never reached one of the two outcomes (%d, %d): the test checks too little", accepted, handedOver)
	}

	// Messages: the canonical one is read in one pass, and mutated ones
	// read in one pass agree with encoding/json's reading.
	for i := 0; i < 10_000; i++ {
		var part [][]byte
		for j := rng.Intn(4); j >= 0; j-- {
			part = append(part, bodies[rng.Intn(len(bodies))])
		}
		msg := EncodeMessage(5, part)
		if i%2 == 1 {
			msg = mutate(rng, msg)
		}
		want, err := decodeMessageJSON(5, msg)
		got, ok := decodeCanonicalMessage(5, msg)
		if !ok {
			if i%2 == 0 && err == nil && allValid(want) {
				t.Fatalf("a message ingest writes was not read in one pass:\n%s", msg)
			}
			continue
		}
		if err != nil || len(got) != len(want) {
			t.Fatalf("one-pass reader read %d items; encoding/json %d items, error %v:\n%q", len(got), len(want), err, msg)
		}
		for k := range got {
			if want[k].Err != nil {
				t.Fatalf("one-pass reader accepted fragment %d, encoding/json refuses it (%v):\n%q", k, want[k].Err, msg)
			}
			sameChecked(t, got[k].Frag, want[k].Frag, msg)
			if !bytes.Equal(got[k].Raw, want[k].Raw) || got[k].Shape != want[k].Shape {
				t.Fatalf("item %d differs: %q %q / %q %q", k, got[k].Raw, got[k].Shape, want[k].Raw, want[k].Shape)
			}
		}
	}
	if _, ok := decodeCanonicalMessage(6, EncodeMessage(5, bodies[:1])); ok {
		t.Fatal("a message of partition 5 was read as partition 6's")
	}
}

func allValid(items []Item) bool {
	for _, it := range items {
		if it.Err != nil {
			return false
		}
	}
	return true
}

// sameChecked fails unless the fragment read in one pass equals the one
// DecodeFragment (or checkFragment's general path) read.
func sameChecked(t *testing.T, got, want *Fragment, body []byte) {
	t.Helper()
	g, w := *got, *want
	if g.NumChanges() != w.NumChanges() {
		t.Fatalf("%d changes read in one pass, %d by encoding/json:\n%q", g.NumChanges(), w.NumChanges(), body)
	}
	if g.HasTruncate() != w.HasTruncate() {
		t.Fatalf("truncate read in one pass %t, by encoding/json %t:\n%q", g.HasTruncate(), w.HasTruncate(), body)
	}
	if !bytes.Equal(g.wire, w.wire) {
		t.Fatalf("wire bytes differ: %q / %q", g.wire, w.wire)
	}
	g.Changes, g.wire, g.changeCount, g.truncates = nil, nil, 0, false
	w.Changes, w.wire, w.changeCount, w.truncates = nil, nil, 0, false
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("read in one pass %+v, by encoding/json %+v:\n%q", g, w, body)
	}
}

// mutate damages body in one small way: a byte removed, added, replaced or
// repeated, as a broken writer or a bit flip would.
func mutate(rng *rand.Rand, body []byte) []byte {
	const alphabet = "\"\\,:{}[]01-9e.+nultrfax \t\n\x00\x1f\x7f\xc3/u"
	b := bytes.Clone(body)
	i := rng.Intn(len(b))
	c := alphabet[rng.Intn(len(alphabet))]
	switch rng.Intn(5) {
	case 0:
		return append(b[:i], b[i+1:]...)
	case 1:
		return append(b[:i], append([]byte{c}, b[i:]...)...)
	case 2:
		b[i] = c
		return b
	case 3: // a span repeated: a field twice, a change twice
		j := min(len(b), i+1+rng.Intn(40))
		return append(b[:j], append(bytes.Clone(b[i:j]), b[j:]...)...)
	default: // a span removed
		j := min(len(b), i+1+rng.Intn(40))
		return append(b[:i], b[j:]...)
	}
}

// BenchmarkDecodeMessage compares the one-pass reader with encoding/json
// on a message of 8 one-row fragments, the shape of a busy partition's
// message under single-row transactions.
func BenchmarkDecodeMessage(b *testing.B) {
	var bodies [][]byte
	for i := 0; i < 8; i++ {
		id, title := "12345", "a title of some length"
		f := &Fragment{Version: WireVersion, Shape: NewHandle(), Xid: 77, CommitLSN: 0x1_6B374D48, EndLSN: 0x1_6B374D90,
			Seq: 0, Last: true, Changes: []Change{{Op: OpInsert, Row: Row{"id": &id, "owner": &id, "title": &title}}}}
		body, err := f.Encode()
		if err != nil {
			b.Fatal(err)
		}
		bodies = append(bodies, body)
	}
	msg := EncodeMessage(3, bodies)
	for _, c := range []struct {
		name   string
		decode func(int, []byte) ([]Item, error)
	}{{"one-pass", DecodeMessage}, {"envelope-by-encoding-json", decodeMessageJSON}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, err := c.decode(3, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
