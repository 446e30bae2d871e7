package match

import (
	"cmp"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// val is a value converted into a domain; which field is used depends on it.
type val struct {
	i int64 // dInt, dBool (0/1), dTime
	f float64
	n num
	s string // dText, dBpchar, dUUID
	// The general evaluator's types (typed.go).
	iv interval
	a  *arrayVal
}

// num is a numeric: finite (r set), or NaN or ±Infinity as Postgres allows.
type num struct {
	special int8 // 0 finite, -1 -Infinity, 1 +Infinity, 2 NaN
	r       *big.Rat
	scale   int32 // display scale: digits after the point Postgres prints
}

// convert reads s, a value of kind k in Postgres text format (a row value, or
// the text of a literal), as a value of domain d.
func convert(s string, k kind, d domain) (val, error) {
	switch {
	case isInt(k):
		i, err := parseInt(s, k)
		if err != nil {
			return val{}, err
		}
		switch d {
		case dInt:
			return val{i: i}, nil
		case dNumeric:
			return val{n: num{r: new(big.Rat).SetInt64(i)}}, nil
		case dFloat:
			return val{f: float64(i)}, nil
		}
	case k == kNumeric:
		switch d {
		case dNumeric:
			n, err := parseNumeric(s)
			return val{n: n}, err
		case dFloat:
			// Postgres casts numeric to float8 through its text form too.
			n, err := parseNumeric(s)
			if err != nil {
				return val{}, err
			}
			return val{f: n.float()}, nil
		}
	case isFloat(k):
		if d == dFloat {
			f, err := parseFloat(s, k)
			return val{f: f}, err
		}
	case isString(k):
		if k == kBpchar {
			// bpchar's trailing spaces are padding: comparisons and casts to text drop them.
			s = strings.TrimRight(s, " ")
		}
		if d == dText || d == dBpchar {
			if d == dBpchar {
				s = strings.TrimRight(s, " ")
			}
			return val{s: s}, nil
		}
	case k == kBool:
		if d == dBool {
			b, err := parseBool(s)
			if err != nil {
				return val{}, err
			}
			if b {
				return val{i: 1}, nil
			}
			return val{}, nil
		}
	case k == kUUID:
		if d == dUUID {
			u, err := parseUUID(s)
			return val{s: u}, err
		}
	case isTemporal(k):
		if d == dTime {
			t, err := parseTime(s, k)
			return val{i: t}, err
		}
	}
	return val{}, fmt.Errorf("internal: no conversion from %s to domain %d", k, d)
}

// compare orders a and b in domain d: -1, 0 or 1.
func compare(d domain, a, b val) int {
	switch d {
	case dInt, dBool, dTime:
		return cmp.Compare(a.i, b.i)
	case dNumeric:
		return a.n.cmp(b.n)
	case dFloat:
		return cmpFloat(a.f, b.f)
	default:
		return strings.Compare(a.s, b.s)
	}
}

// indexKey is the equality-index key of a value: equal values in a domain
// have equal keys, and unequal values different ones. Integer-like domains
// keep the value itself, so finding a bucket neither formats a string nor
// follows a pointer to compare keys; the other domains keep a canonical text.
type indexKey struct {
	i int64
	s string
}

// String renders k for messages.
func (k indexKey) String() string {
	if k.s == "" {
		return strconv.FormatInt(k.i, 10)
	}
	return k.s
}

// key is the equality-index key of v in domain d.
func key(d domain, v val) indexKey {
	switch d {
	case dInt, dBool, dTime:
		return indexKey{i: v.i}
	case dNumeric:
		switch v.n.special {
		case 2:
			return indexKey{s: "NaN"}
		case 1:
			return indexKey{s: "Infinity"}
		case -1:
			return indexKey{s: "-Infinity"}
		}
		return indexKey{s: v.n.r.RatString()}
	case dFloat:
		if math.IsNaN(v.f) {
			return indexKey{s: "NaN"}
		}
		if v.f == 0 {
			return indexKey{s: "0"} // -0 = 0
		}
		return indexKey{s: strconv.FormatFloat(v.f, 'g', -1, 64)}
	default:
		return indexKey{s: v.s}
	}
}

// cmpFloat orders like Postgres: NaN equals NaN and sorts above everything.
func cmpFloat(a, b float64) int {
	an, bn := math.IsNaN(a), math.IsNaN(b)
	switch {
	case an && bn:
		return 0
	case an:
		return 1
	case bn:
		return -1
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// rank orders the numeric specials around the finite values: -Inf < finite < +Inf < NaN.
func (n num) rank() int {
	switch n.special {
	case -1:
		return 0
	case 0:
		return 1
	case 1:
		return 2
	}
	return 3
}

func (n num) cmp(o num) int {
	if c := cmp.Compare(n.rank(), o.rank()); c != 0 || n.special != 0 {
		return c
	}
	return n.r.Cmp(o.r)
}

func (n num) float() float64 {
	switch n.special {
	case 2:
		return math.NaN()
	case 1:
		return math.Inf(1)
	case -1:
		return math.Inf(-1)
	}
	f, _ := n.r.Float64()
	return f
}

func parseInt(s string, k kind) (int64, error) {
	i, err := strconv.ParseInt(strings.TrimSpace(s), 10, intBits(k))
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return 0, fmt.Errorf("%q is out of range for type %s", s, k)
		}
		return 0, fmt.Errorf("%q is not a valid %s", s, k)
	}
	return i, nil
}

// intBits is the size of an integer kind (a switch: parseInt runs per row value).
func intBits(k kind) int {
	switch k {
	case kInt2:
		return 16
	case kInt4:
		return 32
	}
	return 64
}

// maxNumericExponent bounds the exponent of numeric input, so that a literal
// like 1e999999999 cannot make the matcher build a giant number.
const maxNumericExponent = 1000

func parseNumeric(s string) (num, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "nan":
		return num{special: 2}, nil
	case "infinity", "+infinity", "inf", "+inf":
		return num{special: 1}, nil
	case "-infinity", "-inf":
		return num{special: -1}, nil
	}
	if !isDecimal(t) {
		return num{}, fmt.Errorf("%q is not a valid numeric", s)
	}
	if i := strings.IndexAny(t, "eE"); i >= 0 {
		e, err := strconv.Atoi(t[i+1:])
		if err != nil || e > maxNumericExponent || e < -maxNumericExponent {
			return num{}, fmt.Errorf("%q: numeric exponent out of the supported range ±%d", s, maxNumericExponent)
		}
	}
	r, ok := new(big.Rat).SetString(t)
	if !ok {
		return num{}, fmt.Errorf("%q is not a valid numeric", s)
	}
	return num{r: r, scale: decimalScale(t)}, nil
}

// isDecimal accepts [+-]digits[.digits][e[+-]digits] (and ".5", "5.").
func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(s)
}

// parseFloat reads float4/float8 text; a float4 is widened to float64 as
// Postgres does when it compares real with double precision or numeric.
func parseFloat(s string, k kind) (float64, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "nan":
		return math.NaN(), nil
	case "infinity", "+infinity", "inf", "+inf":
		return math.Inf(1), nil
	case "-infinity", "-inf":
		return math.Inf(-1), nil
	}
	if !isDecimal(t) {
		return 0, fmt.Errorf("%q is not a valid %s", s, k)
	}
	bits := 64
	if k == kFloat4 {
		bits = 32
	}
	f, err := strconv.ParseFloat(t, bits)
	if err != nil {
		return 0, fmt.Errorf("%q is out of range for type %s", s, k)
	}
	return f, nil
}

// parseBool accepts what Postgres's boolean input accepts (unique prefixes of
// true/false/yes/no, on/off, 1/0), any case.
func parseBool(s string) (bool, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t != "" {
		for _, w := range []string{"true", "yes"} {
			if strings.HasPrefix(w, t) {
				return true, nil
			}
		}
		for _, w := range []string{"false", "no"} {
			if strings.HasPrefix(w, t) {
				return false, nil
			}
		}
		switch t {
		case "on", "1":
			return true, nil
		case "off", "of", "0":
			return false, nil
		}
	}
	return false, fmt.Errorf("%q is not a valid boolean", s)
}

// parseUUID accepts Postgres's uuid input forms and returns the canonical
// lower-case form.
func parseUUID(s string) (string, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") {
		t = t[1 : len(t)-1]
	}
	var hex []byte
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
			hex = append(hex, c)
		case c >= 'A' && c <= 'F':
			hex = append(hex, c+'a'-'A')
		case c == '-' && len(hex) > 0 && len(hex)%4 == 0 && i+1 < len(t) && t[i+1] != '-':
		default:
			return "", fmt.Errorf("%q is not a valid uuid", s)
		}
	}
	if len(hex) != 32 {
		return "", fmt.Errorf("%q is not a valid uuid", s)
	}
	h := string(hex)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// decimalScale is the display scale Postgres gives numeric input: the digits
// after the point, less the exponent, at least 0.
func decimalScale(t string) int32 {
	mant, exp := t, 0
	if i := strings.IndexAny(t, "eE"); i >= 0 {
		mant = t[:i]
		exp, _ = strconv.Atoi(t[i+1:])
	}
	frac := 0
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		frac = len(mant) - i - 1
	}
	if sc := frac - exp; sc > 0 {
		return int32(sc)
	}
	return 0
}
