package match

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"

	"github.com/fanout/pipeline/fanout"
)

// A clause with subqueries is also kept in disjunctive normal form, as
// Electric's Decomposer builds it: NOT is pushed down to the conditions
// (De Morgan), AND is distributed over OR, and every condition of every
// disjunct gets a position 0..n-1 (a condition in two disjuncts has two
// positions). A condition is anything but AND, OR and NOT: a comparison, a
// subquery test, ... Since De Morgan and distribution hold in SQL's
// three-valued logic, a row is in the shape exactly when some disjunct has
// all its conditions TRUE.
//
// Every row message of such a shape carries, as Electric's do:
//   - active_conditions: one boolean per position, whether that condition
//     (negation applied) is TRUE for the row;
//   - tags: one string per disjunct, its positions' slots joined by "/": a
//     hash of the row's left-side value for a subquery position in the
//     disjunct, "1" for another condition in it, "" for a position not in it.
//
// When a value leaves a subquery's result, the shape's client is told
// {pos, hash(value)} for each position of that subquery: it sets those
// conditions false on the rows whose tag matches and drops the rows left
// with no disjunct all true. The hash of a value is the same in tags and
// patterns (TagHash).

const (
	maxDisjuncts = 64  // disjuncts of the normal form
	maxPositions = 256 // conditions of the normal form, over all disjuncts
)

type dnfPlan struct {
	leaves []dnfLeaf
	pos    []dnfLit // position -> its condition
	disj   [][]int  // disjunct -> its positions, ascending
}

// dnfLeaf is one condition of the clause.
type dnfLeaf struct {
	n   node
	sub *subqueryNode // set when the condition is `left IN (subquery)`
}

// dnfLit is a condition at a position: negated or not.
type dnfLit struct {
	leaf int
	neg  bool
}

// dnfPlan builds the normal form of the boolean expression n. A subquery
// must be a condition of its own (under AND, OR and NOT only), and one
// subquery may not appear both negated and not.
func (c *compiler) dnfPlan(n *pg.Node) (*dnfPlan, error) {
	if c.depth > 0 {
		return nil, nil // only a shape's own clause needs one
	}
	p := &dnfPlan{}
	disj, err := c.toDNF(p, n, false)
	if err != nil {
		return nil, err
	}
	for _, d := range disj {
		var positions []int
		for _, l := range d {
			positions = append(positions, len(p.pos))
			p.pos = append(p.pos, l)
		}
		p.disj = append(p.disj, positions)
	}
	return p, nil
}

// checkPolarity refuses a subquery (by ID: two equal subqueries are one)
// that stands both negated and not: one value entering its result would
// move rows both in and out.
func (p *dnfPlan) checkPolarity() error {
	polarity := map[string]bool{}
	for _, l := range p.pos {
		s := p.leaves[l.leaf].sub
		if s == nil {
			continue
		}
		if neg, seen := polarity[s.sub.ID]; seen && neg != l.neg {
			return fmt.Errorf("where clause: the subquery (%s) is used both as IN and as NOT IN (or under NOT): not supported (Electric refuses it too)", subqueryText(s.sub))
		}
		polarity[s.sub.ID] = l.neg
	}
	return nil
}

func subqueryText(s *Subquery) string {
	if s.SQL != "" {
		return s.SQL
	}
	return "SELECT " + strings.Join(s.Columns, ", ") + " FROM " + s.Table
}

// toDNF is Electric's to_dnf: the disjuncts of n (negated when neg), each
// a list of conditions.
func (c *compiler) toDNF(p *dnfPlan, n *pg.Node, neg bool) ([][]dnfLit, error) {
	if b := n.GetBoolExpr(); b != nil {
		switch b.Boolop {
		case pg.BoolExprType_NOT_EXPR:
			return c.toDNF(p, b.Args[0], !neg)
		case pg.BoolExprType_OR_EXPR, pg.BoolExprType_AND_EXPR:
			union := (b.Boolop == pg.BoolExprType_OR_EXPR) != neg // OR, or NOT AND
			parts := make([][][]dnfLit, len(b.Args))
			for i, a := range b.Args {
				var err error
				if parts[i], err = c.toDNF(p, a, neg); err != nil {
					return nil, err
				}
			}
			var out [][]dnfLit
			if union {
				for _, d := range parts {
					out = append(out, d...)
				}
			} else {
				out = [][]dnfLit{{}}
				for _, d := range parts {
					var next [][]dnfLit
					for _, a := range out {
						for _, b := range d {
							next = append(next, append(append([]dnfLit(nil), a...), b...))
						}
					}
					out = next
					if len(out) > maxDisjuncts {
						break
					}
				}
			}
			if err := dnfLimits(out); err != nil {
				return nil, err
			}
			return out, nil
		}
	}
	leaf, err := c.dnfLeaf(p, n)
	if err != nil {
		return nil, err
	}
	return [][]dnfLit{{{leaf: leaf, neg: neg}}}, nil
}

func dnfLimits(d [][]dnfLit) error {
	n := 0
	for _, x := range d {
		n += len(x)
	}
	if len(d) > maxDisjuncts || n > maxPositions {
		return fmt.Errorf("where clause: with subqueries, the clause's disjunctive normal form (OR of ANDs, which every row message describes) may have at most %d disjuncts and %d conditions; this one has more: factor out common conditions or split the shape", maxDisjuncts, maxPositions)
	}
	return nil
}

// dnfLeaf compiles a condition and returns its index.
func (c *compiler) dnfLeaf(p *dnfPlan, n *pg.Node) (int, error) {
	if sl := n.GetSubLink(); sl != nil {
		x, err := c.subLink(sl)
		if err != nil {
			return 0, err
		}
		p.leaves = append(p.leaves, dnfLeaf{n: x, sub: x.(*subqueryNode)})
		return len(p.leaves) - 1, nil
	}
	before := c.subRefs
	x, err := c.boolean(n)
	if err != nil {
		return 0, err
	}
	if c.subRefs != before {
		return 0, fmt.Errorf("where clause: a subquery must be a condition of its own, combined with others by AND, OR and NOT (not inside IS TRUE, CASE, a comparison, ...)")
	}
	p.leaves = append(p.leaves, dnfLeaf{n: x})
	return len(p.leaves) - 1, nil
}

// Positions is the number of conditions of the clause's normal form (0
// without subqueries: such shapes' messages carry no tags).
func (p *Predicate) Positions() int {
	if p.plan == nil {
		return 0
	}
	return len(p.plan.pos)
}

// Disjuncts lists each disjunct's positions.
func (p *Predicate) Disjuncts() [][]int {
	if p.plan == nil {
		return nil
	}
	return p.plan.disj
}

// SubqueryPositions lists the positions where s's condition stands, and
// whether it is negated there (NOT IN): a value entering s's result then
// moves rows out of the shape, and one leaving moves rows in.
func (p *Predicate) SubqueryPositions(s *Subquery) (positions []int, negated bool) {
	if p.plan == nil {
		return nil, false
	}
	for i, l := range p.plan.pos {
		if x := p.plan.leaves[l.leaf].sub; x != nil && x.sub.ID == s.ID {
			positions = append(positions, i)
			negated = l.neg
		}
	}
	return positions, negated
}

// Active is the row's active_conditions: for each position, whether its
// condition (negation applied) is TRUE, with the subqueries' results res.
func (p *Predicate) Active(row fanout.Row, res Results) []bool {
	if p.plan == nil {
		return nil
	}
	vals := make([]tri, len(p.plan.leaves))
	done := make([]bool, len(p.plan.leaves))
	out := make([]bool, len(p.plan.pos))
	for i, l := range p.plan.pos {
		if !done[l.leaf] {
			c := evalCtx{row: row, res: res}
			vals[l.leaf] = p.plan.leaves[l.leaf].n.eval(&c)
			if c.failed != nil {
				vals[l.leaf] = tNull // Postgres would fail on this row: nothing is TRUE
			}
			done[l.leaf] = true
		}
		v := vals[l.leaf]
		if l.neg {
			v = v.not()
		}
		out[i] = v == tTrue
	}
	return out
}

// Tags is the row's tags, one per disjunct, for shape handle.
func (p *Predicate) Tags(handle string, row fanout.Row) []string {
	if p.plan == nil {
		return nil
	}
	slots := make([]string, len(p.plan.pos))
	for i, l := range p.plan.pos {
		if s := p.plan.leaves[l.leaf].sub; s != nil {
			id, _, _ := s.sub.LeftTuple(row)
			slots[i] = TagHash(handle, id)
		} else {
			slots[i] = "1"
		}
	}
	out := make([]string, len(p.plan.disj))
	parts := make([]string, len(p.plan.pos))
	for d, positions := range p.plan.disj {
		clear(parts)
		for _, pos := range positions {
			parts[pos] = slots[pos]
		}
		out[d] = strings.Join(parts, "/")
	}
	return out
}

// TagHash is the hash of a subquery value (a tuple ID) in the tags and move
// patterns of shape handle: 32 hex digits. Only its equality matters
// (clients compare tags with patterns), so any shape-specific stable hash
// does; this is Electric's choice, md5 of the handle and the value.
func TagHash(handle, tupleID string) string {
	h := md5.New()
	h.Write([]byte(handle))
	h.Write([]byte{0x1f})
	h.Write([]byte(tupleID))
	return hex.EncodeToString(h.Sum(nil))
}
