package shapemsg

import "testing"

func str(s string) *string { return &s }

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
