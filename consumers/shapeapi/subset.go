package shapeapi

import (
	"errors"
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
)

// The statements a where clause and an order_by are parsed in, as Electric
// parses them (its error locations count from their start).
const (
	wherePrefix   = "SELECT 1 WHERE "
	orderByPrefix = "SELECT 1 ORDER BY "
)

// atLocation is Electric's wording of a parse error: "At location N:
// <parser message>", N the 0-based position of the error in the whole
// statement (the parser's cursor position, 1-based, minus one).
func atLocation(err error) string {
	var pe *parser.Error
	if errors.As(err, &pe) {
		return fmt.Sprintf("At location %d: %s", max(pe.Cursorpos-1, 0), pe.Message)
	}
	return err.Error()
}

// whereSyntax checks that where parses as `SELECT 1 WHERE <where>`; the
// error is Electric's wording. Type checks against the table come later
// (shapes.Add, or the subset's compile).
func whereSyntax(where string) error {
	if strings.TrimSpace(where) == "" {
		return nil
	}
	if _, err := pg.Parse(wherePrefix + where); err != nil {
		return errors.New(atLocation(err))
	}
	return nil
}
