package shapemsg

import (
	"encoding/json"
	"testing"
)

func str(s string) *string { return &s }

func TestAppendStringRoundTrips(t *testing.T) {
	for _, s := range []string{"", "plain", "q\"b\\s", "\n\r\t\x00\x1f", "ü €", "\u2028\u2029", "bad \xff utf8", "</script>"} {
		b := AppendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q encodes to invalid JSON %s: %v", s, b, err)
		}
		want := s
		if s == "bad \xff utf8" {
			want = "bad \ufffd utf8"
		}
		if got != want {
			t.Errorf("%q round trips to %q", s, got)
		}
	}
}

func TestSnapshotEncoderMessage(t *testing.T) {
	e := NewSnapshotEncoder("public", `we"ird`, []string{"a", "id", "b"}, []string{"id", "a"})
	got := string(e.Append(nil, []*string{nil, str("x/y"), str("v")}))
	want := `{"key":"\"public\".\"we\"\"ird\"/\"x//y\"/_","value":{"a":null,"id":"x/y","b":"v"},"headers":{"operation":"insert","relation":["public","we\"ird"]}}`
	if got != want {
		t.Fatalf("message\n%s\nwant\n%s", got, want)
	}
	if !e.KeyColumns([]string{"id", "a"}) || NewSnapshotEncoder("s", "t", []string{"a"}, []string{"id"}).KeyColumns([]string{"id"}) {
		t.Fatal("KeyColumns")
	}
}
