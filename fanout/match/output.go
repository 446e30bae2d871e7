package match

import (
	"math"
	"strconv"
	"strings"
)

// output is a value's text as Postgres's output function prints it
// (DateStyle ISO, TimeZone UTC, IntervalStyle postgres, extra_float_digits 1).
func output(v val, t typ) string {
	if t.arr {
		return formatArray(v.a, t.elem())
	}
	switch t.k {
	case kInt2, kInt4, kInt8:
		return strconv.FormatInt(v.i, 10)
	case kNumeric:
		return formatNumeric(v.n)
	case kFloat4:
		return formatFloat(v.f, 32)
	case kFloat8:
		return formatFloat(v.f, 64)
	case kBool:
		if v.i == 1 {
			return "t"
		}
		return "f"
	case kDate:
		return formatDate(v.i)
	case kTimestamp:
		return formatTimestamp(v.i, false)
	case kTimestamptz:
		return formatTimestamp(v.i, true)
	case kTime:
		return formatTime(v.i)
	case kInterval:
		return formatInterval(v.iv)
	}
	return v.s
}

func formatNumeric(n num) string {
	switch n.special {
	case 2:
		return "NaN"
	case 1:
		return "Infinity"
	case -1:
		return "-Infinity"
	}
	return n.r.FloatString(int(n.scale))
}

// formatFloat is Postgres's shortest-exact float output: plain notation for
// decimal exponents from -4 to 14 (5 for real), else d.ddde+XX.
func formatFloat(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		if math.Signbit(f) {
			return "-0"
		}
		return "0"
	}
	e := strconv.FormatFloat(f, 'e', -1, bits) // d.ddde±XX
	mant, exps, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(exps)
	limit := 15
	if bits == 32 {
		limit = 6
	}
	if exp < -4 || exp >= limit {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		es := strconv.Itoa(exp)
		if len(es) < 2 {
			es = "0" + es
		}
		return mant + "e" + sign + es
	}
	return strconv.FormatFloat(f, 'f', -1, bits)
}
