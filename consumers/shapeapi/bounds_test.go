package shapeapi

import (
	"net/url"
	"strings"
	"testing"
)

// Numbers a client sends back, and text Postgres cannot hold, are a 400
// naming the parameter, never a value that wraps or a definition that
// fails later.
func TestRequestBoundsAre400s(t *testing.T) {
	base := func(kv ...string) url.Values {
		q := url.Values{"table": {"items"}, "offset": {"-1"}}
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q
	}
	for _, tc := range []struct {
		q     url.Values
		param string
		want  string
	}{
		{base("offset", "18446744073709551615_0", "handle", "h"), "offset", "out of range"},
		{base("offset", "9223372036854775808_1", "handle", "h"), "offset", "out of range"},
		{base("offset", "99999999999999999999999_1", "handle", "h"), "offset", "invalid format"},
		{base("offset", "5_1", "handle", "h", "live", "true", "cursor", "9223372036854775807"), "cursor", "out of range"},
		{base("offset", "5_1", "handle", "h", "live", "true", "cursor", "18446744073709551616"), "cursor", "out of range"},
		{base("params[1]", "a\x00b", "where", "title = $1"), "params", "NUL"},
		{base("where", "title = 'a\x00b'"), "where", "NUL"},
	} {
		_, bad := ParseRequest(tc.q)
		if bad == nil || len(bad.Errors[tc.param]) == 0 || !strings.Contains(bad.Errors[tc.param][0], tc.want) {
			t.Errorf("%v: got %v, want a 400 on %s containing %q", tc.q, bad, tc.param, tc.want)
		}
	}
	for _, ok := range []url.Values{
		base("offset", "9223372036854775807_9223372036854775807", "handle", "h"),
		base("offset", BaseOffset(0, 28).String(), "handle", "h"), // the offset after a base's first 28 rows
		base("offset", "0_18446744073709551615", "handle", "h"),   // 0_inf (protocol_test: the log's start)
		base("offset", "5_1", "handle", "h", "live", "true", "cursor", "9007199254740991"),
		base("offset", "5_1", "handle", "h", "live", "true", "cursor", "not-a-number"),
	} {
		if _, bad := ParseRequest(ok); bad != nil {
			t.Errorf("%v: %v", ok, bad)
		}
	}
	if got := NextCursor(cursorEpoch, "9007199254740991"); strings.HasPrefix(got, "-") {
		t.Errorf("NextCursor after the largest cursor accepted wrapped: %s", got)
	}
}

func TestSubsetLimitZeroAndNULAre400s(t *testing.T) {
	for _, tc := range []struct {
		q     url.Values
		field string
	}{
		{url.Values{"subset__limit": {"0"}, "subset__order_by": {"id"}}, "limit"},
		{url.Values{"subset__where": {"title = $1"}, "subset__params": {`{"1":"a\u0000"}`}}, "params"},
		{url.Values{"subset__where": {"title = 'a\x00'"}}, "where"},
	} {
		if _, errs := ParseSubset(tc.q); len(errs[tc.field]) == 0 {
			t.Errorf("%v: errors %v, want one on %s", tc.q, errs, tc.field)
		}
	}
	if _, errs := ParseSubsetBody([]byte(`{"limit":0,"order_by":"id"}`)); len(errs["limit"]) == 0 {
		t.Errorf("a POST body with limit 0: errors %v", errs)
	}
}

func TestSecretMatches(t *testing.T) {
	for _, tc := range []struct {
		got, want string
		ok        bool
	}{
		{"s3cret", "s3cret", true},
		{"s3cre", "s3cret", false},
		{"s3cret!", "s3cret", false},
		{"", "s3cret", false},
		{"S3CRET", "s3cret", false},
	} {
		if SecretMatches(tc.got, tc.want) != tc.ok {
			t.Errorf("SecretMatches(%q, %q) = %v", tc.got, tc.want, !tc.ok)
		}
	}
}
