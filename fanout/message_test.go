package fanout

import (
	"reflect"
	"strings"
	"testing"
)

// A consumer checks fragments without decoding their rows (checkFragment);
// it must accept and refuse exactly what DecodeFragment does, so that what
// it stores, readers can decode.
func TestCheckedFragmentsAreTheDecodableOnes(t *testing.T) {
	head := `{"v":1,"shape":"sa","xid":7,"commit_lsn":"0/10","end_lsn":"0/20","commit_time":"2026-01-01T00:00:00Z","seq":0,"last":true,`
	cases := map[string]bool{
		head + `"changes":[]}`: true,
		head + `"changes":[{"op":"insert","row":{"id":"1","v":null}}]}`:          true,
		head + `"changes":[{"op":"update","row":{"id":"1"},"old":{"id":"2"}}]}`:  true,
		head + `"changes":[{"op":"delete","old":{"id":"1"}},{"op":"truncate"}]}`: true,
		head + `"changes":[{"op":"insert"}]}`:                                    false,
		head + `"changes":[{"op":"insert","row":null}]}`:                         false,
		head + `"changes":[{"op":"delete","row":{"id":"1"}}]}`:                   false,
		head + `"changes":[{"op":"upsert","row":{"id":"1"}}]}`:                   false,
		head + `"changes":[{"op":"insert","row":["id"]}]}`:                       false,
		head + `"changes":[{"op":"insert","row":{"id":"1"},"extra":1}]}`:         false,
		head + `"changes":[],"unknown":1}`:                                       false,
		strings.Replace(head, `"v":1`, `"v":2`, 1) + `"changes":[]}`:             false,
		strings.Replace(head, `"0/10"`, `"zz"`, 1) + `"changes":[]}`:             false,
		strings.Replace(head, `"sa"`, `"Bad Handle"`, 1) + `"changes":[]}`:       false,
		strings.Replace(head, `"seq":0`, `"seq":-1`, 1) + `"changes":[]}`:        false,
		head + `"changes":[]} trailing`:                                          false,
		// before: the old row under REPLICA IDENTITY FULL, on updates and deletes only.
		head + `"changes":[{"op":"update","row":{"id":"1","t":"b"},"before":{"id":"1","t":"a"}}]}`: true,
		head + `"changes":[{"op":"delete","old":{"id":"1"},"before":{"id":"1","t":"a"}}]}`:         true,
		head + `"changes":[{"op":"update","row":{"id":"1"},"before":null}]}`:                       true,
		head + `"changes":[{"op":"insert","row":{"id":"1"},"before":null}]}`:                       true,
		head + `"changes":[{"op":"insert","row":{"id":"1"},"before":{"id":"1"}}]}`:                 false,
		head + `"changes":[{"op":"truncate","before":{}}]}`:                                        false,
		head + `"changes":[{"op":"update","row":{"id":"1"},"before":["id"]}]}`:                     false,
		head + `"changes":[{"op":"delete","old":{"id":"1"},"before":"x"}]}`:                        false,
	}
	for body, ok := range cases {
		_, derr := DecodeFragment([]byte(body))
		f, cerr := checkFragment([]byte(body))
		if (derr == nil) != ok || (cerr == nil) != ok {
			t.Errorf("%s: DecodeFragment err %v, checkFragment err %v; want ok=%v", body, derr, cerr, ok)
			continue
		}
		if ok {
			full, _ := DecodeFragment([]byte(body))
			if f.NumChanges() != full.NumChanges() || f.Position() != full.Position() || f.Shape != full.Shape {
				t.Errorf("%s: checked %+v, decoded %+v", body, f, full)
			}
			if w, _ := f.Wire(); string(w) != body {
				t.Errorf("checked fragment's wire bytes differ from the message's")
			}
		}
	}
}

func TestMessageKeepsGoodFragmentsBesideABadOne(t *testing.T) {
	good := `{"v":1,"shape":"sa","xid":7,"commit_lsn":"0/10","end_lsn":"0/20","commit_time":"2026-01-01T00:00:00Z","seq":0,"last":true,"changes":[]}`
	body := EncodeMessage(3, [][]byte{[]byte(good), []byte(`{"v":9,"shape":"sb"}`), []byte(good)})
	items, err := DecodeMessage(3, body)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 3 || items[0].Err != nil || items[2].Err != nil || items[1].Err == nil || items[1].Shape != "sb" {
		t.Fatalf("items %+v", items)
	}
	if _, err := DecodeMessage(4, body); err == nil {
		t.Fatal("a message of partition 3 read as partition 4's")
	}
	if _, err := DecodeMessage(3, []byte(`{"v":1,"partition":3,"fragments":[]}`)); err == nil {
		t.Fatal("a message of another version was read")
	}
}

// Before survives the wire; a fragment without it (every log written
// before it existed) decodes with none.
func TestFragmentBeforeRoundTrip(t *testing.T) {
	v := func(s string) Value { return &s }
	f := &Fragment{Version: WireVersion, Shape: "sa", Xid: 7, CommitLSN: 0x10, EndLSN: 0x20, Last: true, Changes: []Change{
		{Op: OpInsert, Row: Row{"id": v("1"), "t": v("a")}},
		{Op: OpUpdate, Row: Row{"id": v("1"), "t": v("b")}, Before: Row{"id": v("1"), "t": v("a")}},
		{Op: OpUpdate, Row: Row{"id": v("1"), "t": v("b")}, Before: Row{"id": v("1")}},
		{Op: OpDelete, Old: Row{"id": v("1")}, Before: Row{"id": v("1"), "t": nil}},
	}}
	body, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(body), `"before"`) != 3 {
		t.Errorf("an insert must not carry before: %s", body)
	}
	got, err := DecodeFragment(body)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Changes, f.Changes) {
		t.Errorf("decoded changes %+v, want %+v", got.Changes, f.Changes)
	}
	if _, err := checkFragment(body); err != nil {
		t.Errorf("the checker refuses an encoded fragment: %v", err)
	}
	old := `{"v":1,"shape":"sa","xid":7,"commit_lsn":"0/10","end_lsn":"0/20","commit_time":"2026-01-01T00:00:00Z","seq":0,"last":true,` +
		`"changes":[{"op":"update","row":{"id":"1"}},{"op":"delete","old":{"id":"1"}}]}`
	got, err = DecodeFragment([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range got.Changes {
		if c.Before != nil {
			t.Errorf("change %d of a fragment without before decoded with %v", i, c.Before)
		}
	}
}
