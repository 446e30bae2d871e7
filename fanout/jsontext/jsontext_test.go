package jsontext

import (
	"bytes"
	"encoding/json"
	"testing"
)

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

// Byte for byte what encoding/json writes with HTML escaping off, so hand
// encoders built on it print strings as json.Marshal would.
func TestAppendStringIsEncodingJSONWithoutHTMLEscaping(t *testing.T) {
	for _, s := range []string{"", "plain", "q\"b\\s", "\n\r\t\x00\x1f\x7f", "ü €", "\u2028\u2029", "bad \xff utf8 \xe2\x82", "</script>&"} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if got := string(AppendString(nil, s)) + "\n"; got != want.String() {
			t.Errorf("%q: got %s, encoding/json writes %s", s, got, want.String())
		}
	}
}
