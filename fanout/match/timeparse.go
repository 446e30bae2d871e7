package match

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// parseTime reads a date, timestamp or timestamptz in ISO form (what Postgres
// prints with DateStyle ISO, and what an operator writes in a literal) as
// microseconds since 1970-01-01 00:00 UTC.
//
// Accepted: YYYY-MM-DD[( |T)HH:MM[:SS[.ffffff]]][ ][Z|±HH[:MM[:SS]]|±HHMM][ BC],
// infinity, -infinity, epoch. A date ignores a time part, a timestamp ignores
// an offset (both as Postgres does). A timestamptz without an offset is read
// as UTC: Postgres would use the session TimeZone, which a matcher does not have.
func parseTime(s string, k kind) (int64, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "infinity", "+infinity":
		return math.MaxInt64, nil
	case "-infinity":
		return math.MinInt64, nil
	case "epoch":
		return 0, nil
	}
	bad := func() (int64, error) {
		return 0, fmt.Errorf("%q is not a valid %s (write ISO form, e.g. '2024-01-31' or '2024-01-31 13:45:00+00')", s, k)
	}
	bc := false
	if u := strings.ToUpper(t); strings.HasSuffix(u, " BC") {
		bc, t = true, strings.TrimSpace(t[:len(t)-3])
	}
	p := &scanner{s: t}
	year, ok := p.digits(1, 7)
	if !ok || !p.eat('-') {
		return bad()
	}
	month, ok1 := p.digits(1, 2)
	if !ok1 || !p.eat('-') {
		return bad()
	}
	day, ok2 := p.digits(1, 2)
	if !ok2 {
		return bad()
	}
	var hour, min, sec, micros int
	if p.eat('T') || p.eat('t') || (p.peek() == ' ' && p.isDigitAt(1)) {
		p.eat(' ')
		var okh, okm bool
		if hour, okh = p.digits(1, 2); !okh || !p.eat(':') {
			return bad()
		}
		if min, okm = p.digits(2, 2); !okm {
			return bad()
		}
		if p.eat(':') {
			var oks bool
			if sec, oks = p.digits(2, 2); !oks {
				return bad()
			}
			if p.eat('.') {
				start := p.i
				for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
					p.i++
				}
				frac := p.s[start:p.i]
				if frac == "" {
					return bad()
				}
				// Round to microseconds as Postgres does (rint: half to even).
				f, _ := strconv.ParseFloat("0."+frac, 64)
				micros = int(math.RoundToEven(f * 1e6))
			}
		}
	}
	offset := 0 // seconds east of UTC
	p.eat(' ')
	if p.i < len(p.s) {
		switch c := p.s[p.i]; {
		case c == 'Z' || c == 'z':
			p.i++
		case strings.EqualFold(p.s[p.i:], "UTC"):
			p.i = len(p.s)
		case c == '+' || c == '-':
			p.i++
			oh, okh := p.digits(2, 2)
			if !okh {
				return bad()
			}
			om, os := 0, 0
			if p.eat(':') {
				if om, ok = p.digits(2, 2); !ok {
					return bad()
				}
				if p.eat(':') {
					if os, ok = p.digits(2, 2); !ok {
						return bad()
					}
				}
			} else if p.i < len(p.s) {
				if om, ok = p.digits(2, 2); !ok {
					return bad()
				}
			}
			offset = oh*3600 + om*60 + os
			if c == '-' {
				offset = -offset
			}
		default:
			return bad()
		}
	}
	if p.i != len(p.s) {
		return bad()
	}
	if bc {
		if year == 0 {
			return bad()
		}
		year = 1 - year
	} else if year == 0 {
		return bad()
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) ||
		hour > 24 || min > 59 || sec > 60 || (hour == 24 && (min != 0 || sec != 0 || micros != 0)) {
		return 0, fmt.Errorf("%q: date/time field value out of range for %s", s, k)
	}
	if k == kDate {
		hour, min, sec, micros, offset = 0, 0, 0, 0, 0
	}
	if k == kTimestamp {
		offset = 0
	}
	unix := time.Date(year, time.Month(month), day, hour, min, sec, 0, time.UTC).Unix() - int64(offset)
	return unix*1_000_000 + int64(micros), nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// scanner walks a date/time literal.
type scanner struct {
	s string
	i int
}

func (p *scanner) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *scanner) isDigitAt(off int) bool {
	j := p.i + off
	return j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9'
}

func (p *scanner) eat(c byte) bool {
	if p.peek() == c {
		p.i++
		return true
	}
	return false
}

// digits reads min..max decimal digits.
func (p *scanner) digits(min, max int) (int, bool) {
	start := p.i
	for p.i < len(p.s) && p.i-start < max && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	if p.i-start < min {
		return 0, false
	}
	n, err := strconv.Atoi(p.s[start:p.i])
	return n, err == nil
}
