package fanout

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"
)

// ValidateHandle accepts exactly the handles this pattern describes.
func TestValidateHandleIsThePattern(t *testing.T) {
	pattern := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	cases := []string{"", "s", "-s", "_s", "s-_9", "S", "s.x", "s x", "sé", strings.Repeat("a", 64), strings.Repeat("a", 65), NewHandle()}
	rng := rand.New(rand.NewSource(3))
	const alphabet = "az09_-A.*> é"
	for range 20_000 {
		b := make([]byte, rng.Intn(67))
		for i := range b {
			b[i] = alphabet[rng.Intn(len(alphabet))]
		}
		cases = append(cases, string(b))
	}
	for _, h := range cases {
		if got, want := ValidateHandle(h) == nil, pattern.MatchString(h); got != want {
			t.Fatalf("ValidateHandle(%q) accepts: %v, pattern: %v", h, got, want)
		}
	}
}
