package shapeapi

import (
	"net/url"
	"strings"
	"testing"
)

func TestWhereSyntaxErrorIsElectricsWording(t *testing.T) {
	for _, tc := range []struct{ where, want string }{
		// "SELECT 1 WHERE owner = = 1": the second "=" is at 0-based position 23.
		{"owner = = 1", `At location 23: syntax error at or near "="`},
		{"owner = ", `At location 23: syntax error at end of input`},
		{"(owner = 1", `At location 25: syntax error at end of input`},
		{"title = 'x", `At location 23: unterminated quoted string at or near "'x"`},
	} {
		err := whereSyntax(tc.where)
		if err == nil || err.Error() != tc.want {
			t.Errorf("whereSyntax(%q) = %v, want %q", tc.where, err, tc.want)
		}
	}
	for _, ok := range []string{"", "  ", "owner = 1", "title ILIKE $1 AND id > 3"} {
		if err := whereSyntax(ok); err != nil {
			t.Errorf("whereSyntax(%q) = %v", ok, err)
		}
	}
	_, bad := ParseRequest(url.Values{"table": {"items"}, "offset": {"-1"}, "where": {"owner = = 1"}})
	if bad == nil || len(bad.Errors["where"]) != 1 || !strings.HasPrefix(bad.Errors["where"][0], "At location 23: ") {
		t.Fatalf("ParseRequest with a bad where: %v", bad)
	}
	if body := string(bad.Body()); !strings.Contains(body, `"message":"Invalid request"`) || !strings.Contains(body, `"where":["At location 23: syntax error at or near \"=\""]`) {
		t.Fatalf("400 body %s", body)
	}
}
