package visibility

import "testing"

func TestVisible(t *testing.T) {
	const epoch = uint64(3) << 32
	cases := []struct {
		name string
		snap string
		xid  uint32
		want bool
	}{
		{"below xmin", "100:110:", 99, true},
		{"at xmin, not in progress", "100:110:", 100, true},
		{"between, in progress", "100:110:100,105", 105, false},
		{"between, finished", "100:110:100,105", 104, true},
		{"at xmax", "100:110:", 110, false},
		{"after xmax", "100:110:", 2000, false},
		{"epoch 3, below xmin", "12884901988:12884901998:", 99, true},               // 3<<32 + 100
		{"epoch 3, in progress", "12884901988:12884901998:12884901990", 102, false}, // 3<<32 + 102
		{"epoch 3, after xmax", "12884901988:12884901998:", 200, false},
		// xmax just past a wrap: 32-bit xids near 2^32 belong to the epoch before.
		{"wrap: old epoch xid below xmin", "17179869180:17179869190:", 4294967290, true}, // 4<<32 - 4 .. 4<<32 + 6
		{"wrap: new epoch xid in progress", "17179869180:17179869190:17179869185", 1, false},
		{"wrap: new epoch xid after xmax", "17179869180:17179869190:", 7, false},
	}
	_ = epoch
	for _, c := range cases {
		s, err := Parse(c.snap)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := s.Visible(c.xid); got != c.want {
			t.Errorf("%s: Visible(%d) in %s = %v, want %v (widened to %d)", c.name, c.xid, c.snap, got, c.want, s.Widen(c.xid))
		}
	}
}

func TestWiden(t *testing.T) {
	s := Snapshot{Xmin: 5<<32 + 10, Xmax: 5<<32 + 20}
	for _, c := range []struct {
		xid  uint32
		want uint64
	}{{15, 5<<32 + 15}, {25, 5<<32 + 25}, {4294967295, 5<<32 - 1}} {
		if got := s.Widen(c.xid); got != c.want {
			t.Errorf("Widen(%d) = %d, want %d", c.xid, got, c.want)
		}
	}
	if got := (Snapshot{Xmin: 3, Xmax: 8}).Widen(4294967290); got != 4294967290 {
		t.Errorf("epoch 0: Widen of a huge xid = %d, want it unchanged", got)
	}
}

func TestParseRoundTrip(t *testing.T) {
	for _, in := range []string{"100:110:", "100:110:101,105", "12884901988:12884901998:12884901990"} {
		s, err := Parse(in)
		if err != nil || s.String() != in {
			t.Errorf("Parse(%q) = %v, %v; String %q", in, s, err, s.String())
		}
	}
	for _, bad := range []string{"", "1:2", "a:2:", "5:2:", "1:5:x"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
