package shapeapi

import (
	"encoding/json"
	"math"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/fanout/pipeline/fanout"
)

func str(s string) *string { return &s }

func TestParseOffset(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Offset
		now  bool
		bad  bool
	}{
		{in: "-1", want: StartOffset},
		{in: "now", now: true},
		{in: "0_0", want: Offset{}},
		{in: "22419920_16777880", want: Offset{Tx: 22419920, Op: 16777880}},
		{in: "0_inf", want: Offset{Op: InfOp}},
		{in: "22419920_inf", want: Offset{Tx: 22419920, Op: InfOp}},
		{in: "1_infinity", bad: true},
		{in: "0_18446744073709551616", bad: true},
		{in: "1_", bad: true},
		{in: "_1", bad: true},
		{in: "abc", bad: true},
		{in: "-2", bad: true},
		{in: "1_2_3", bad: true},
	} {
		got, now, err := ParseOffset(tc.in)
		if (err != nil) != tc.bad || now != tc.now || (!tc.bad && got != tc.want) {
			t.Errorf("ParseOffset(%q) = %v %v %v, want %v %v bad=%v", tc.in, got, now, err, tc.want, tc.now, tc.bad)
		}
		if !tc.bad && !tc.now && got.String() != tc.in {
			t.Errorf("%q prints as %q", tc.in, got.String())
		}
	}
}

func TestOffsetOrder(t *testing.T) {
	ordered := []Offset{StartOffset, {}, {Op: 3}, {Tx: 5}, {Tx: 5, Op: 2}, {Tx: 6}}
	for i := range ordered {
		for j := range ordered {
			if got := ordered[i].Compare(ordered[j]); (got < 0) != (i < j) || (got == 0) != (i == j) {
				t.Errorf("%v compared to %v = %d", ordered[i], ordered[j], got)
			}
		}
	}
	// Every op of a fragment lies between FirstOp and LastOp, and fragments do not overlap.
	p := fanout.Position{CommitLSN: 100, Seq: 2}
	q := fanout.Position{CommitLSN: 100, Seq: 3}
	if !FirstOp(q).After(LastOp(p)) || LastOp(p).Compare(FirstOp(p)) <= 0 {
		t.Errorf("fragment op ranges overlap: %v..%v then %v", FirstOp(p), LastOp(p), FirstOp(q))
	}
}

func TestKey(t *testing.T) {
	rel := Relation{Schema: "public", Table: `we"ird`, PK: []string{"a", "b"}}
	for _, tc := range []struct {
		row  fanout.Row
		want string
	}{
		{fanout.Row{"a": str("1"), "b": str("x")}, `"public"."we""ird"/"1"/"x"`},
		{fanout.Row{"a": str("a/b"), "b": nil}, `"public"."we""ird"/"a//b"/_`},
	} {
		if got := rel.Key(tc.row); got != tc.want {
			t.Errorf("Key(%v) = %s, want %s", tc.row, got, tc.want)
		}
	}
}

func TestEncodeFragment(t *testing.T) {
	rel := Relation{Schema: "public", Table: "items", PK: []string{"id"}}
	f := &fanout.Fragment{Xid: 77, CommitLSN: 1000, Seq: 1, Last: true, Changes: []fanout.Change{
		{Op: fanout.OpInsert, Row: fanout.Row{"id": str("1"), "t": str("a")}},
		{Op: fanout.OpUpdate, Row: fanout.Row{"id": str("1"), "t": str("b")}},
		{Op: fanout.OpUpdate, Old: fanout.Row{"id": str("1")}, Row: fanout.Row{"id": str("2"), "t": str("b")}},
		{Op: fanout.OpDelete, Old: fanout.Row{"id": str("2")}},
	}}
	entries, truncated := EncodeFragment(rel, f)
	if truncated {
		t.Fatal("no truncate here")
	}
	type msg struct {
		Key     string            `json:"key"`
		Value   map[string]string `json:"value"`
		Headers map[string]any    `json:"headers"`
	}
	base := uint64(1) << opBits
	want := []struct {
		op, key string
		at      uint64
		last    bool
	}{
		{"insert", `"public"."items"/"1"`, base, false},
		{"update", `"public"."items"/"1"`, base + 2, false},
		{"delete", `"public"."items"/"1"`, base + 4, false}, // a key change: delete the old key...
		{"insert", `"public"."items"/"2"`, base + 5, false}, // ...then insert the new row
		{"delete", `"public"."items"/"2"`, base + 6, true},
	}
	if len(entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(entries), len(want))
	}
	for i, e := range entries {
		var m msg
		if err := json.Unmarshal(e.JSON, &m); err != nil {
			t.Fatal(err)
		}
		w := want[i]
		last, _ := m.Headers["last"].(bool)
		if m.Headers["operation"] != w.op || m.Key != w.key || e.Offset != (Offset{Tx: 1000, Op: w.at}) || last != w.last ||
			m.Headers["lsn"] != "1000" || !reflect.DeepEqual(m.Headers["txids"], []any{77.0}) || m.Headers["op_position"] != float64(w.at) {
			t.Errorf("entry %d: %s at %v, want %+v", i, e.JSON, e.Offset, w)
		}
	}
	if _, truncated := EncodeFragment(rel, &fanout.Fragment{CommitLSN: 5, Changes: []fanout.Change{{Op: fanout.OpTruncate}}}); !truncated {
		t.Error("a truncate must rotate the shape")
	}
}

// The replica mode decides what updates and deletes carry, when the log
// has the old row (Before); without it (REPLICA IDENTITY DEFAULT, old logs)
// both modes give the whole new row and the old key.
func TestEncodeFragmentReplicaModes(t *testing.T) {
	row := func(kv ...string) fanout.Row {
		r := fanout.Row{}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "NULL" {
				r[kv[i]] = nil
			} else {
				r[kv[i]] = str(kv[i+1])
			}
		}
		return r
	}
	f := &fanout.Fragment{Xid: 9, CommitLSN: 2000, Last: true, Changes: []fanout.Change{
		// title changed from a to b; n unchanged
		{Op: fanout.OpUpdate, Row: row("id", "1", "title", "b", "n", "5"), Before: row("id", "1", "title", "a")},
		// nothing the shape keeps changed
		{Op: fanout.OpUpdate, Row: row("id", "1", "title", "b", "n", "5"), Before: row("id", "1")},
		// key 1 -> 2, title b -> c
		{Op: fanout.OpUpdate, Row: row("id", "2", "title", "c", "n", "5"), Old: row("id", "1"), Before: row("id", "1", "title", "b")},
		{Op: fanout.OpDelete, Old: row("id", "2"), Before: row("id", "2", "title", "c", "n", "NULL")},
		// from a log without before
		{Op: fanout.OpUpdate, Row: row("id", "3", "title", "x", "n", "1")},
		{Op: fanout.OpDelete, Old: row("id", "3")},
	}}
	render := func(full bool) []string {
		rel := Relation{Schema: "public", Table: "items", PK: []string{"id"}, Columns: []string{"id", "title", "n"}, Full: full}
		entries, _ := EncodeFragment(rel, f)
		var out []string
		for _, e := range entries {
			var m struct {
				Value    json.RawMessage `json:"value"`
				OldValue json.RawMessage `json:"old_value"`
				Headers  map[string]any  `json:"headers"`
			}
			if err := json.Unmarshal(e.JSON, &m); err != nil {
				t.Fatalf("%s: %v", e.JSON, err)
			}
			line := m.Headers["operation"].(string) + " " + string(m.Value)
			if m.OldValue != nil {
				line += " old_value " + string(m.OldValue)
			}
			for _, h := range []string{"key_change_to", "key_change_from"} {
				if k, ok := m.Headers[h]; ok {
					line += " " + h + " " + k.(string)
				}
			}
			out = append(out, line)
		}
		return out
	}
	wantDefault := []string{
		`update {"id":"1","title":"b"}`,
		`update {"id":"1"}`,
		`delete {"id":"1"} key_change_to "public"."items"/"2"`,
		`insert {"id":"2","title":"c","n":"5"} key_change_from "public"."items"/"1"`,
		`delete {"id":"2"}`,
		`update {"id":"3","title":"x","n":"1"}`,
		`delete {"id":"3"}`,
	}
	wantFull := []string{
		`update {"id":"1","title":"b","n":"5"} old_value {"title":"a"}`,
		`update {"id":"1","title":"b","n":"5"} old_value {}`,
		`delete {"id":"1","title":"b","n":"5"} key_change_to "public"."items"/"2"`,
		`insert {"id":"2","title":"c","n":"5"} key_change_from "public"."items"/"1"`,
		`delete {"id":"2","title":"c","n":null}`,
		`update {"id":"3","title":"x","n":"1"}`,
		`delete {"id":"3"}`,
	}
	for _, tc := range []struct {
		full bool
		want []string
	}{{false, wantDefault}, {true, wantFull}} {
		if got := render(tc.full); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("replica full=%v:\n got  %s\n want %s", tc.full, strings.Join(got, "\n      "), strings.Join(tc.want, "\n      "))
		}
	}
}

func TestChunkCutsAtTheLimitButAlwaysProgresses(t *testing.T) {
	big := Entry{Offset: Offset{Tx: 1}, JSON: []byte(`"` + strings.Repeat("x", 100) + `"`)}
	c := NewChunk(50, StartOffset)
	if !c.Add(big) {
		t.Fatal("the first entry must always fit")
	}
	if c.Add(Entry{Offset: Offset{Tx: 2}, JSON: []byte(`1`)}) {
		t.Fatal("a full chunk took another entry")
	}
	c.Control([]byte(`{"headers":{}}`))
	if got := string(c.Bytes()); !strings.HasPrefix(got, `["x`) || !strings.HasSuffix(got, `",{"headers":{}}]`) || c.Last() != (Offset{Tx: 1}) {
		t.Fatalf("chunk %s ends at %v", got, c.Last())
	}
	if got := string(NewChunk(10, StartOffset).Bytes()); got != "[]" {
		t.Fatalf("empty chunk %s", got)
	}
}

func TestWatermark(t *testing.T) {
	for _, tc := range []struct{ last, safe, want pglogrepl.LSN }{
		{0, 0, 0},
		{100, 0, 101},   // past the log's last commit: resuming at <w>_0 skips all of it
		{100, 50, 101},  // the safe LSN is behind the log
		{100, 500, 499}, // every transaction below 500 is persisted
	} {
		if got := Watermark(tc.last, tc.safe); got != tc.want {
			t.Errorf("Watermark(%d, %d) = %d, want %d", tc.last, tc.safe, got, tc.want)
		}
	}
}

func TestNextCursor(t *testing.T) {
	now := cursorEpoch.Add(1001 * time.Second)
	if got := NextCursor(now, ""); got != "1020" {
		t.Errorf("cursor %s, want 1020", got)
	}
	if got := NextCursor(now, "1020"); got <= "1020" || len(got) < 4 {
		t.Errorf("cursor %s after a request's 1020 must be larger", got)
	}
}

func TestCacheControlAndETag(t *testing.T) {
	for k, want := range map[Kind]string{
		KindInitial: "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746",
		KindCatchUp: "public, max-age=60, stale-while-revalidate=300",
		KindLive:    "public, max-age=5, stale-while-revalidate=5",
		KindSSE:     "public, max-age=59",
		KindRefetch: "public, max-age=60, must-revalidate",
		KindError:   "no-store",
	} {
		if got := CacheControl(k, 60*time.Second, 300*time.Second); got != want {
			t.Errorf("kind %d: %q, want %q", k, got, want)
		}
	}
	if got := ETag("h", StartOffset, Offset{}); got != `"h:-1:0_0"` {
		t.Errorf("etag %s", got)
	}
}

func TestParseRequest(t *testing.T) {
	ok := func(q string) *Request {
		t.Helper()
		v, _ := url.ParseQuery(q)
		r, bad := ParseRequest(v)
		if bad != nil {
			t.Fatalf("%s: %v", q, bad)
		}
		return r
	}
	r := ok(`table=electric_test."Issues for x"&offset=-1&columns="id","Title"&params[1]=a&params[2]=b&replica=full&cache-buster=1`)
	if r.Def.Schema != "electric_test" || r.Def.Table != "Issues for x" || !reflect.DeepEqual(r.Def.Columns, []string{"id", "Title"}) ||
		!reflect.DeepEqual(r.Def.Params, []string{"a", "b"}) || r.Def.Replica != "full" || !r.Offset.Start {
		t.Fatalf("parsed %+v", r.Def)
	}
	r = ok(`table=Items&offset=5_2&handle=h&live=true&experimental_live_sse=true&columns=id,Title&cursor=20`)
	if r.Def.Schema != "public" || r.Def.Table != "items" || !reflect.DeepEqual(r.Def.Columns, []string{"id", "title"}) ||
		!r.Live || !r.SSE || r.Cursor != "20" || r.Offset != (Offset{Tx: 5, Op: 2}) {
		t.Fatalf("parsed %+v %+v", r, r.Def)
	}
	if a, b := ok(`table=items&offset=-1&where=x = 1`).Def.Key(), ok(`table=public.items&offset=-1&where=x = 1&handle=z`).Def.Key(); a != b {
		t.Error("the same definition must have the same key")
	}
	if a, b := ok(`table=items&offset=-1`).Def.Key(), ok(`table=items&offset=-1&replica=full`).Def.Key(); a == b {
		t.Error("replica is part of the definition")
	}
	for q, param := range map[string]string{
		`offset=-1`:                          "table",
		`table=items`:                        "offset",
		`table=items&offset=x`:               "offset",
		`table=items&offset=1_1`:             "handle",
		`table=items&offset=-1&live=true`:    "live",
		`table=a.b.c&offset=-1`:              "table",
		`table="open&offset=-1`:              "table",
		`table=items&offset=-1&params[2]=x`:  "params",
		`table=items&offset=-1&replica=half`: "replica",
		`table=items&offset=-1&columns=a,,b`: "columns",
	} {
		v, _ := url.ParseQuery(q)
		_, bad := ParseRequest(v)
		if bad == nil || bad.Errors[param] == nil {
			t.Errorf("%s: errors %v, want one on %s", q, bad, param)
			continue
		}
		var body struct {
			Message string              `json:"message"`
			Errors  map[string][]string `json:"errors"`
		}
		if err := json.Unmarshal(bad.Body(), &body); err != nil || body.Message != "Invalid request" {
			t.Errorf("400 body %s", bad.Body())
		}
	}
}

func TestSchemaHeader(t *testing.T) {
	cols := []ColumnInfo{{Name: "id", Type: "int4", NotNull: true}, {Name: "tags", Type: "text", Dims: 1}, {Name: "x", Type: "text"}}
	got := SchemaHeader(cols, []string{"id", "tags"}, []string{"id"})
	want := `{"id":{"type":"int4","dims":0,"pk_index":0,"not_null":true},"tags":{"type":"text","dims":1}}`
	if got != want {
		t.Fatalf("schema %s, want %s", got, want)
	}
}

func TestHubWakesOnlyItsShape(t *testing.T) {
	h := newHub()
	a, cancelA := h.register("a")
	b, cancelB := h.register("b")
	defer cancelB()
	h.wake("a")
	h.wake("a") // coalesced into the pending signal
	select {
	case <-a:
	default:
		t.Fatal("a was not woken")
	}
	select {
	case <-b:
		t.Fatal("b was woken by a's notice")
	default:
	}
	if h.held() != 2 {
		t.Fatalf("held %d", h.held())
	}
	cancelA()
	if h.held() != 1 {
		t.Fatalf("held %d after cancel", h.held())
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"b\s`, "nl\n\t\r\x01\x1f", "ünï 日本", "bad\xffutf8", "\u2028x\u2029", "<&>"} {
		var got, want any
		if err := json.Unmarshal(appendString(nil, s), &got); err != nil {
			t.Fatalf("%q encodes to invalid JSON %s", s, appendString(nil, s))
		}
		b, _ := json.Marshal(s)
		json.Unmarshal(b, &want)
		if got != want {
			t.Errorf("%q decodes to %q, encoding/json's to %q", s, got, want)
		}
	}
	rel := Relation{Schema: "public", Table: "t", PK: []string{"id"}, Columns: []string{"id", "b"}}
	msg := SnapshotRow(rel, fanout.Row{"b": nil, "id": str("1"), "extra": str("x")})
	var m map[string]any
	if err := json.Unmarshal(msg, &m); err != nil || !strings.HasPrefix(string(msg), `{"key":"\"public\".\"t\"/\"1\"","value":{"id":"1","b":null,"extra":"x"}`) {
		t.Fatalf("snapshot row %s (%v)", msg, err)
	}
}

// A base's row offsets carry the generation and the row count, and no
// other offset reads as one.
func TestBaseOffsets(t *testing.T) {
	for _, c := range []struct {
		gen  uint64
		rows int64
	}{{0, 0}, {0, 150}, {7, 1 << 39}, {1<<baseGenBits - 1, 1<<baseRowBits - 1}} {
		o := BaseOffset(c.gen, c.rows)
		back, _, err := ParseOffset(o.String())
		if err != nil || back != o {
			t.Fatalf("%v prints as %s, reads back as %v %v", c, o, back, err)
		}
		if g, r, ok := back.baseRow(); !ok || g != c.gen || r != c.rows {
			t.Fatalf("%s: gen %d rows %d ok %v, want %v", o, g, r, ok, c)
		}
	}
	if o := BaseOffset(1<<baseGenBits-1, 1<<baseRowBits-1); o.Op != math.MaxInt64 {
		t.Fatalf("the largest base offset is %s, past int64", o)
	}
	for _, o := range []Offset{{}, {Op: 3}, {Op: InfOp}, {Tx: 5, Op: 1 << 62}, StartOffset} {
		if _, _, ok := o.baseRow(); ok {
			t.Fatalf("%v reads as a base row offset", o)
		}
	}
}
