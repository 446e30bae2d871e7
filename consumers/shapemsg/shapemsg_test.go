package shapemsg

import "testing"

func TestSnapshotEncoderMessage(t *testing.T) {
	e := NewSnapshotEncoder("public", `we"ird`, []string{"a", "id", "b"}, []string{"id", "a"})
	got := string(e.Append(nil, [][]byte{nil, []byte("x/y"), []byte("v")}))
	want := `{"key":"\"public\".\"we\"\"ird\"/\"x//y\"/_","value":{"a":null,"id":"x/y","b":"v"},"headers":{"operation":"insert","relation":["public","we\"ird"]}}`
	if got != want {
		t.Fatalf("message\n%s\nwant\n%s", got, want)
	}
	if !e.KeyColumns([]string{"id", "a"}) || NewSnapshotEncoder("s", "t", []string{"a"}, []string{"id"}).KeyColumns([]string{"id"}) {
		t.Fatal("KeyColumns")
	}
}

func TestSnapshotEncoderTellsEmptyFromNull(t *testing.T) {
	e := NewSnapshotEncoder("public", "t", []string{"id", "v"}, []string{"id"})
	got := string(e.Append(nil, [][]byte{[]byte(""), nil}))
	want := `{"key":"\"public\".\"t\"/\"\"","value":{"id":"","v":null},"headers":{"operation":"insert","relation":["public","t"]}}`
	if got != want {
		t.Fatalf("message\n%s\nwant\n%s", got, want)
	}
}
