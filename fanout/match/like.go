package match

import (
	"errors"
	"strings"
)

// likePattern is a compiled LIKE pattern: '%' matches any run of characters,
// '_' one character, a backslash makes the next character literal.
type likePattern struct {
	toks []likeTok
	fold bool // ILIKE: ASCII letters match either case, as Postgres does under locale C
}

type likeTok struct {
	any  bool // '%'
	one  bool // '_'
	char rune
}

// compileLike compiles pattern with esc as its escape character (-1: none).
func compileLike(pattern string, fold bool, esc rune) (*likePattern, error) {
	if fold {
		pattern = asciiLower(pattern)
	}
	p := &likePattern{fold: fold}
	rs := []rune(pattern)
	for i := 0; i < len(rs); i++ {
		switch r := rs[i]; {
		case r == esc:
			if i+1 == len(rs) {
				return nil, errors.New("LIKE pattern must not end with escape character")
			}
			i++
			p.toks = append(p.toks, likeTok{char: rs[i]})
		case r == '%':
			if n := len(p.toks); n > 0 && p.toks[n-1].any {
				continue // %% is the same as %
			}
			p.toks = append(p.toks, likeTok{any: true})
		case r == '_':
			p.toks = append(p.toks, likeTok{one: true})
		default:
			p.toks = append(p.toks, likeTok{char: r})
		}
	}
	return p, nil
}

// match reports whether s matches the whole pattern. It backtracks only to
// the last '%', so it runs in O(len(s) * len(pattern)) at worst.
func (p *likePattern) match(s string) bool {
	if p.fold {
		s = asciiLower(s)
	}
	rs := []rune(s)
	si, pi := 0, 0
	star, starS := -1, 0
	for si < len(rs) {
		if pi < len(p.toks) {
			t := p.toks[pi]
			switch {
			case t.any:
				star, starS = pi, si
				pi++
				continue
			case t.one || t.char == rs[si]:
				si++
				pi++
				continue
			}
		}
		if star < 0 {
			return false
		}
		starS++
		si, pi = starS, star+1
	}
	for pi < len(p.toks) && p.toks[pi].any {
		pi++
	}
	return pi == len(p.toks)
}

// asciiLower folds A-Z only: Postgres's lower() under the C locale.
func asciiLower(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, s)
}
