package match

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
)

const usPerDay = 86_400_000_000

// minTimestamp is 4714-11-24 BC 00:00 UTC in microseconds since 1970, the
// lowest timestamp Postgres accepts.
const minTimestamp = -210_866_803_200_000_000

// interval is Postgres's interval: months, days and microseconds kept apart.
type interval struct {
	months, days int32
	us           int64
}

// cmp orders intervals as Postgres does: a month counts 30 days, a day 24 hours.
func (a interval) cmp(b interval) int {
	return a.span().Cmp(b.span())
}

func (a interval) span() *big.Int {
	d := big.NewInt(int64(a.months)*30 + int64(a.days))
	d.Mul(d, big.NewInt(usPerDay))
	return d.Add(d, big.NewInt(a.us))
}

var errIntervalRange = &errEval{"interval out of range"}

func (a interval) neg() (interval, error) {
	if a.months == math.MinInt32 || a.days == math.MinInt32 || a.us == math.MinInt64 {
		return interval{}, errIntervalRange
	}
	return interval{-a.months, -a.days, -a.us}, nil
}

func (a interval) add(b interval) (interval, error) {
	m, d, us := int64(a.months)+int64(b.months), int64(a.days)+int64(b.days), a.us+b.us
	if m != int64(int32(m)) || d != int64(int32(d)) || (a.us > 0 && b.us > 0 && us < 0) || (a.us < 0 && b.us < 0 && us >= 0) {
		return interval{}, errIntervalRange
	}
	return interval{int32(m), int32(d), us}, nil
}

func justifyHours(a interval) (interval, error) {
	whole := a.us / usPerDay
	a.us -= whole * usPerDay
	d := int64(a.days) + whole
	if d != int64(int32(d)) {
		return interval{}, errIntervalRange
	}
	a.days = int32(d)
	if a.days > 0 && a.us < 0 {
		a.us += usPerDay
		a.days--
	} else if a.days < 0 && a.us > 0 {
		a.us -= usPerDay
		a.days++
	}
	return a, nil
}

func justifyDays(a interval) (interval, error) {
	whole := a.days / 30
	a.days -= whole * 30
	m := int64(a.months) + int64(whole)
	if m != int64(int32(m)) {
		return interval{}, errIntervalRange
	}
	a.months = int32(m)
	if a.months > 0 && a.days < 0 {
		a.days += 30
		a.months--
	} else if a.months < 0 && a.days > 0 {
		a.days -= 30
		a.months++
	}
	return a, nil
}

func justifyInterval(a interval) (interval, error) {
	whole := a.us / usPerDay
	a.us -= whole * usPerDay
	d := int64(a.days) + whole
	wm := d / 30
	d -= wm * 30
	m := int64(a.months) + wm
	if m != int64(int32(m)) {
		return interval{}, errIntervalRange
	}
	a.months, a.days = int32(m), int32(d)
	if a.months > 0 && (a.days < 0 || (a.days == 0 && a.us < 0)) {
		a.days += 30
		a.months--
	} else if a.months < 0 && (a.days > 0 || (a.days == 0 && a.us > 0)) {
		a.days -= 30
		a.months++
	}
	if a.days > 0 && a.us < 0 {
		a.us += usPerDay
		a.days--
	} else if a.days < 0 && a.us > 0 {
		a.us -= usPerDay
		a.days++
	}
	return a, nil
}

// parseInterval reads the interval forms Postgres prints (IntervalStyle
// postgres) and the common input forms: "1 year 2 mons -3 days 04:05:06.5",
// "2 hours 30 minutes", "1.5 days", "@ 1 hour ago", "-01:30".
func parseInterval(s string) (interval, error) {
	bad := func() (interval, error) {
		return interval{}, fmt.Errorf("%q is not a valid interval (write e.g. '1 day 02:00:00' or '2 hours 30 minutes')", s)
	}
	if t := strings.TrimSpace(s); strings.HasPrefix(t, "P") || strings.HasPrefix(t, "p") {
		return parseISOInterval(t, bad)
	}
	f := strings.Fields(strings.ToLower(s))
	if len(f) > 0 && f[0] == "@" {
		f = f[1:]
	}
	ago := false
	if len(f) > 0 && f[len(f)-1] == "ago" {
		ago, f = true, f[:len(f)-1]
	}
	if len(f) == 0 {
		return bad()
	}
	var m, d, u int64 // months, days, microseconds
	for i := 0; i < len(f); i++ {
		tok := f[i]
		if strings.Contains(tok, ":") {
			t, err := parseClock(tok)
			if err != nil {
				return bad()
			}
			u += t
			continue
		}
		j := 0
		for j < len(tok) && (tok[j] == '+' || tok[j] == '-' || tok[j] == '.' || (tok[j] >= '0' && tok[j] <= '9')) {
			j++
		}
		numText, unit := tok[:j], tok[j:]
		if numText == "" {
			return bad()
		}
		if unit == "" {
			if i+1 < len(f) {
				i++
				unit = f[i]
			} else {
				unit = "s"
			}
		}
		r, ok := new(big.Rat).SetString(numText)
		if !ok {
			return bad()
		}
		whole := new(big.Int).Quo(r.Num(), r.Denom()) // toward zero
		frac := new(big.Rat).Sub(r, new(big.Rat).SetInt(whole))
		w := whole.Int64()
		if !whole.IsInt64() {
			return interval{}, errIntervalRange
		}
		fracUs := func(per int64) int64 { // rint(frac * per) microseconds
			x := new(big.Rat).Mul(frac, new(big.Rat).SetInt64(per))
			f, _ := x.Float64()
			return int64(math.RoundToEven(f))
		}
		spillDays := func(perDays int64) { // AdjustFractDays
			x := new(big.Rat).Mul(frac, new(big.Rat).SetInt64(perDays))
			wd := new(big.Int).Quo(x.Num(), x.Denom())
			d += wd.Int64()
			rest := new(big.Rat).Sub(x, new(big.Rat).SetInt(wd))
			rf, _ := new(big.Rat).Mul(rest, new(big.Rat).SetInt64(usPerDay)).Float64()
			u += int64(math.RoundToEven(rf))
		}
		switch unit {
		case "microsecond", "microseconds", "us", "usec", "usecs", "microsecon":
			u += w + fracUs(1)
		case "millisecond", "milliseconds", "ms", "msec", "msecs":
			u += w*1000 + fracUs(1000)
		case "second", "seconds", "s", "sec", "secs":
			u += w*1_000_000 + fracUs(1_000_000)
		case "minute", "minutes", "m", "min", "mins":
			u += w*60_000_000 + fracUs(60_000_000)
		case "hour", "hours", "h", "hr", "hrs":
			u += w*3_600_000_000 + fracUs(3_600_000_000)
		case "day", "days", "d":
			d += w
			u += fracUs(usPerDay)
		case "week", "weeks", "w":
			d += w * 7
			spillDays(7)
		case "month", "months", "mon", "mons":
			m += w
			spillDays(30)
		case "year", "years", "y", "yr", "yrs":
			fm, _ := new(big.Rat).Mul(frac, big.NewRat(12, 1)).Float64()
			m += w*12 + int64(math.RoundToEven(fm))
		case "decade", "decades":
			fm, _ := new(big.Rat).Mul(frac, big.NewRat(120, 1)).Float64()
			m += w*120 + int64(math.RoundToEven(fm))
		case "century", "centuries":
			fm, _ := new(big.Rat).Mul(frac, big.NewRat(1200, 1)).Float64()
			m += w*1200 + int64(math.RoundToEven(fm))
		default:
			return bad()
		}
	}
	if ago {
		m, d, u = -m, -d, -u
	}
	if m != int64(int32(m)) || d != int64(int32(d)) {
		return interval{}, errIntervalRange
	}
	return interval{int32(m), int32(d), u}, nil
}

// parseClock reads [+-]HH:MM[:SS[.ffffff]] as microseconds.
func parseClock(tok string) (int64, error) {
	neg := false
	if tok != "" && (tok[0] == '-' || tok[0] == '+') {
		neg = tok[0] == '-'
		tok = tok[1:]
	}
	parts := strings.Split(tok, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, fmt.Errorf("bad time")
	}
	h, err1 := strconv.ParseInt(parts[0], 10, 64)
	mi, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil || mi > 59 || mi < 0 || h < 0 || len(parts[1]) != 2 {
		return 0, fmt.Errorf("bad time")
	}
	var us int64
	if len(parts) == 3 {
		sec := parts[2]
		whole, frac, _ := strings.Cut(sec, ".")
		sv, err := strconv.ParseInt(whole, 10, 64)
		if err != nil || sv > 60 || sv < 0 || len(whole) != 2 {
			return 0, fmt.Errorf("bad time")
		}
		us = sv * 1_000_000
		if frac != "" {
			for _, c := range frac {
				if c < '0' || c > '9' {
					return 0, fmt.Errorf("bad time")
				}
			}
			f, _ := strconv.ParseFloat("0."+frac, 64)
			us += int64(math.RoundToEven(f * 1e6))
		}
	}
	t := h*3_600_000_000 + mi*60_000_000 + us
	if neg {
		t = -t
	}
	return t, nil
}

// parseTimeOfDay reads a time (without time zone) as microseconds since midnight.
func parseTimeOfDay(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-") || strings.HasPrefix(t, "+") {
		return 0, fmt.Errorf("%q is not a valid time", s)
	}
	us, err := parseClock(t)
	if err != nil || us > usPerDay {
		return 0, fmt.Errorf("%q is not a valid time (write HH:MM[:SS[.ffffff]])", s)
	}
	return us, nil
}

// timestamp helpers: microseconds since 1970 UTC; MaxInt64/MinInt64 are ±infinity.

func finite(ts int64) bool { return ts != math.MaxInt64 && ts != math.MinInt64 }

func checkTimestamp(ts int64, what string) (int64, error) {
	if ts < minTimestamp || ts == math.MaxInt64 {
		return 0, evalErrorf("%s out of range", what)
	}
	return ts, nil
}

func addOverflows(a, b int64) bool {
	r := a + b
	return (a > 0 && b > 0 && r < 0) || (a < 0 && b < 0 && r >= 0)
}

// tsPlusInterval is timestamp_pl_interval (UTC for timestamptz).
func tsPlusInterval(ts int64, iv interval) (int64, error) {
	if !finite(ts) {
		return ts, nil
	}
	day := floorDiv(ts, usPerDay)
	tod := ts - day*usPerDay
	if iv.months != 0 {
		t := time.Unix(day*86400, 0).UTC()
		y, mo, d := t.Date()
		total := int64(y)*12 + int64(mo-1) + int64(iv.months)
		ny, nm := floorDiv(total, 12), total-floorDiv(total, 12)*12+1
		if dm := daysIn(int(ny), int(nm)); d > dm {
			d = dm
		}
		day = time.Date(int(ny), time.Month(nm), d, 0, 0, 0, 0, time.UTC).Unix() / 86400
		if day*usPerDay < minTimestamp || day > math.MaxInt64/usPerDay-1 {
			return 0, evalErrorf("timestamp out of range")
		}
	}
	day += int64(iv.days)
	if day > math.MaxInt64/usPerDay-1 || day < math.MinInt64/usPerDay+1 {
		return 0, evalErrorf("timestamp out of range")
	}
	r := day*usPerDay + tod
	if addOverflows(r, iv.us) {
		return 0, evalErrorf("timestamp out of range")
	}
	return checkTimestamp(r+iv.us, "timestamp")
}

// timeOp compiles the date/time operators.
func (c *compiler) timeOp(name string, a, b texpr) (texpr, bool, error) {
	ta, tb := a.typ().k, b.typ().k
	switch {
	case ta == kDate && isInt(tb) && tb != kInt8 && (name == "+" || name == "-"):
		return strict2(scalar(kDate), a, b, func(x, y val) (val, error) {
			if !finite(x.i) {
				return x, nil
			}
			n := y.i
			if name == "-" {
				n = -n
			}
			// Dates past the timestamp range (year 294276) fail here, though
			// Postgres's date reaches 5874897: a limit of the representation.
			if n > math.MaxInt64/usPerDay || n < math.MinInt64/usPerDay || addOverflows(x.i, n*usPerDay) {
				return val{}, evalErrorf("date out of range")
			}
			r := x.i + n*usPerDay
			if r < minTimestamp || r == math.MaxInt64 {
				return val{}, evalErrorf("date out of range")
			}
			return val{i: r}, nil
		}), true, nil
	case isInt(ta) && ta != kInt8 && tb == kDate && name == "+":
		e, _, err := c.timeOp(name, b, a)
		return e, true, err
	case ta == kDate && tb == kDate && name == "-":
		return strict2(scalar(kInt4), a, b, func(x, y val) (val, error) {
			if !finite(x.i) || !finite(y.i) {
				return val{}, evalErrorf("cannot subtract infinite dates")
			}
			return val{i: (x.i - y.i) / usPerDay}, nil
		}), true, nil
	case ta == kDate && tb == kTime && name == "+", ta == kTime && tb == kDate && name == "+":
		if ta == kTime {
			a, b = b, a
		}
		return strict2(scalar(kTimestamp), a, b, func(x, y val) (val, error) {
			if !finite(x.i) {
				return x, nil
			}
			return val{i: x.i + y.i}, nil
		}), true, nil
	case isTemporal(ta) && tb == kInterval && (name == "+" || name == "-"),
		ta == kInterval && isTemporal(tb) && name == "+":
		if ta == kInterval {
			a, b = b, a
			ta = tb
		}
		rt := scalar(kTimestamp)
		if ta == kTimestamptz {
			rt = scalar(kTimestamptz)
		}
		return strict2(rt, a, b, func(x, y val) (val, error) {
			d := y.iv
			if name == "-" {
				var err error
				if d, err = d.neg(); err != nil {
					return val{}, err
				}
			}
			r, err := tsPlusInterval(x.i, d)
			return val{i: r}, err
		}), true, nil
	case isTemporal(ta) && isTemporal(tb) && name == "-" && !(ta == kDate && tb == kDate):
		return strict2(scalar(kInterval), a, b, func(x, y val) (val, error) {
			if !finite(x.i) || !finite(y.i) {
				return val{}, evalErrorf("cannot subtract infinite timestamps")
			}
			d := x.i - y.i
			if (x.i >= 0 && y.i < 0 && d < 0) || (x.i < 0 && y.i > 0 && d >= 0) {
				return val{}, errIntervalRange
			}
			r, err := justifyHours(interval{us: d})
			return val{iv: r}, err
		}), true, nil
	case ta == kTime && tb == kTime && name == "-":
		return strict2(scalar(kInterval), a, b, func(x, y val) (val, error) {
			return val{iv: interval{us: x.i - y.i}}, nil
		}), true, nil
	case (ta == kTime && tb == kInterval && (name == "+" || name == "-")) || (ta == kInterval && tb == kTime && name == "+"):
		if ta == kInterval {
			a, b = b, a
		}
		return strict2(scalar(kTime), a, b, func(x, y val) (val, error) {
			d := y.iv.us % usPerDay
			if name == "-" {
				d = -d
			}
			r := (x.i + d) % usPerDay
			if r < 0 {
				r += usPerDay
			}
			return val{i: r}, nil
		}), true, nil
	case ta == kInterval && tb == kInterval && (name == "+" || name == "-"):
		return strict2(scalar(kInterval), a, b, func(x, y val) (val, error) {
			d := y.iv
			if name == "-" {
				var err error
				if d, err = d.neg(); err != nil {
					return val{}, err
				}
			}
			r, err := x.iv.add(d)
			return val{iv: r}, err
		}), true, nil
	case ta == kInterval && isNumber(tb) && (name == "*" || name == "/"), isNumber(ta) && tb == kInterval && name == "*":
		return nil, true, fmt.Errorf("where clause: interval %s number is not supported (the matcher does not reproduce Postgres's spilling of fractional months and days); write the interval you mean", name)
	}
	return nil, false, nil
}

// Output in Postgres's ISO DateStyle, TimeZone UTC.

func formatDate(us int64) string {
	switch us {
	case math.MaxInt64:
		return "infinity"
	case math.MinInt64:
		return "-infinity"
	}
	t := time.Unix(floorDiv(us, 1_000_000), 0).UTC()
	y, m, d := t.Date()
	bc := ""
	if y <= 0 {
		y, bc = 1-y, " BC"
	}
	return fmt.Sprintf("%04d-%02d-%02d%s", y, m, d, bc)
}

func formatTimestamp(us int64, tz bool) string {
	if !finite(us) {
		return formatDate(us)
	}
	sec := floorDiv(us, 1_000_000)
	frac := us - sec*1_000_000
	t := time.Unix(sec, 0).UTC()
	y, m, d := t.Date()
	bc := ""
	if y <= 0 {
		y, bc = 1-y, " BC"
	}
	s := fmt.Sprintf("%04d-%02d-%02d %02d:%02d:%02d%s", y, m, d, t.Hour(), t.Minute(), t.Second(), fracText(frac))
	if tz {
		s += "+00"
	}
	return s + bc
}

func fracText(us int64) string {
	if us == 0 {
		return ""
	}
	return strings.TrimRight(fmt.Sprintf(".%06d", us), "0")
}

func formatTime(us int64) string {
	h, m, s := us/3_600_000_000, us/60_000_000%60, us/1_000_000%60
	return fmt.Sprintf("%02d:%02d:%02d%s", h, m, s, fracText(us%1_000_000))
}

// formatInterval is IntervalStyle postgres.
func formatInterval(iv interval) string {
	var b strings.Builder
	zero, before := true, false
	part := func(v int64, unit string) {
		if v == 0 {
			return
		}
		if !zero {
			b.WriteByte(' ')
		}
		sign := ""
		if before && v > 0 {
			sign = "+"
		}
		plural := "s"
		if v == 1 {
			plural = ""
		}
		fmt.Fprintf(&b, "%s%d %s%s", sign, v, unit, plural)
		before, zero = v < 0, false
	}
	part(int64(iv.months/12), "year")
	part(int64(iv.months%12), "mon")
	part(int64(iv.days), "day")
	if zero || iv.us != 0 {
		if !zero {
			b.WriteByte(' ')
		}
		t := iv.us
		sign := ""
		if t < 0 {
			sign = "-"
			t = -t
		} else if before {
			sign = "+"
		}
		fmt.Fprintf(&b, "%s%02d:%02d:%02d%s", sign, t/3_600_000_000, t/60_000_000%60, t/1_000_000%60, fracText(t%1_000_000))
	}
	return b.String()
}

// zoneShift converts between UTC and a named zone's local time (AT TIME ZONE).
func zoneShift(zone string, us int64, toLocal bool) (int64, error) {
	if !finite(us) {
		return us, nil
	}
	loc, err := loadZone(zone)
	if err != nil {
		return 0, err
	}
	sec := floorDiv(us, 1_000_000)
	frac := us - sec*1_000_000
	if toLocal {
		_, off := time.Unix(sec, 0).In(loc).Zone()
		return (sec+int64(off))*1_000_000 + frac, nil
	}
	// us is a local time in loc: find the UTC instant (Postgres picks the
	// offset in force at that local time, the later one in a gap).
	t := time.Unix(sec, 0).UTC()
	lt := time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), 0, loc)
	return lt.Unix()*1_000_000 + frac, nil
}

func loadZone(zone string) (*time.Location, error) {
	z := strings.TrimSpace(zone)
	if strings.EqualFold(z, "utc") || strings.EqualFold(z, "gmt") || strings.EqualFold(z, "z") {
		return time.UTC, nil
	}
	if z == "" || strings.ContainsAny(z[:1], "+-0123456789") {
		return nil, evalErrorf("time zone %q: numeric (POSIX) zones are not supported; write a zone name such as 'Europe/Paris'", zone)
	}
	loc, err := time.LoadLocation(z)
	if err != nil {
		return nil, evalErrorf("time zone %q not recognized", zone)
	}
	return loc, nil
}

// parseISOInterval reads ISO 8601 format with designators, what Postgres
// prints under IntervalStyle iso_8601 (the snapshot session's setting):
// P1Y2M3DT4H5M6.5S, P-1DT1H, PT0S. Fractions spill as in the verbose form.
func parseISOInterval(s string, bad func() (interval, error)) (interval, error) {
	t := strings.ToUpper(s[1:])
	var words []string
	timePart := false
	for t != "" {
		if t[0] == 'T' {
			if timePart {
				return bad()
			}
			timePart, t = true, t[1:]
			continue
		}
		j := 0
		for j < len(t) && (t[j] == '+' || t[j] == '-' || t[j] == '.' || (t[j] >= '0' && t[j] <= '9')) {
			j++
		}
		if j == 0 || j == len(t) {
			return bad()
		}
		unit := map[byte]string{'Y': "years", 'M': "months", 'W': "weeks", 'D': "days"}[t[j]]
		if timePart {
			unit = map[byte]string{'H': "hours", 'M': "minutes", 'S': "seconds"}[t[j]]
		}
		if unit == "" {
			return bad()
		}
		words = append(words, t[:j], unit)
		t = t[j+1:]
	}
	if len(words) == 0 {
		return bad()
	}
	return parseInterval(strings.Join(words, " "))
}
