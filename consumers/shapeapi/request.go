package shapeapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// Definition is what identifies a shape to clients: the same definition
// gets the same handle until the shape is rotated.
type Definition struct {
	Schema, Table string
	Where         string
	Params        []string
	// Columns is the projection as requested (nil: every column).
	Columns []string
	// Replica is "default" or "full".
	Replica string
	// Log is "full" or "changes_only".
	Log string
}

// Qualified is the pipeline's "schema.table".
func (d Definition) Qualified() string { return d.Schema + "." + d.Table }

// Key is a stable name of the definition, usable as a KV key.
func (d Definition) Key() string {
	b, _ := json.Marshal([]any{d.Schema, d.Table, d.Where, d.Params, d.Columns, d.Replica, d.Log})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// Request is a parsed GET /v1/shape.
type Request struct {
	Def    Definition
	Offset Offset
	Now    bool // offset=now
	Handle string
	Live   bool
	SSE    bool
	Cursor string
	// Subset is a subset snapshot request (subset__* or a POST body), or nil.
	Subset *Subset
}

// BadRequest is a 400 with Electric's error body.
type BadRequest struct {
	Errors map[string][]string
	// Subset holds the errors of a subset's fields, errors.subset in the body.
	Subset map[string][]string
}

func (e *BadRequest) Error() string {
	var parts []string
	for _, k := range e.keys() {
		parts = append(parts, k+": "+strings.Join(e.Errors[k], "; "))
	}
	for k, msgs := range e.Subset {
		parts = append(parts, "subset "+k+": "+strings.Join(msgs, "; "))
	}
	return "invalid request: " + strings.Join(parts, ", ")
}

func (e *BadRequest) keys() []string {
	ks := make([]string, 0, len(e.Errors))
	for k := range e.Errors {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Body is Electric's 400 body.
func (e *BadRequest) Body() []byte {
	errs := map[string]any{}
	for k, v := range e.Errors {
		errs[k] = v
	}
	if e.Subset != nil {
		errs["subset"] = e.Subset
	}
	b, _ := json.Marshal(map[string]any{"message": "Invalid request", "errors": errs})
	return b
}

func (e *BadRequest) addSubset(field, msg string) {
	if e.Subset == nil {
		e.Subset = map[string][]string{}
	}
	e.Subset[field] = append(e.Subset[field], msg)
}

func (e *BadRequest) add(param, msg string) {
	if e.Errors == nil {
		e.Errors = map[string][]string{}
	}
	e.Errors[param] = append(e.Errors[param], msg)
}

// Invalid is a BadRequest about one parameter.
func Invalid(param, msg string) *BadRequest {
	e := &BadRequest{}
	e.add(param, msg)
	return e
}

// Limits bound what a request may ask for.
const (
	maxWhereBytes = 16 << 10
	maxParams     = 256
	maxColumns    = 1600 // Postgres's own limit on a table's columns
)

// ParseRequest reads the parameters of GET /v1/shape. Unknown parameters
// are ignored (clients add cache busters).
func ParseRequest(q url.Values) (*Request, *BadRequest) {
	bad := &BadRequest{}
	r := &Request{}
	table := q.Get("table")
	if table == "" {
		bad.add("table", "can't be blank")
	} else if schema, name, err := ParseTable(table); err != nil {
		bad.add("table", err.Error())
	} else {
		r.Def.Schema, r.Def.Table = schema, name
	}
	r.Def.Where = strings.TrimSpace(q.Get("where"))
	if len(r.Def.Where) > maxWhereBytes {
		bad.add("where", fmt.Sprintf("is longer than %d bytes", maxWhereBytes))
	} else if err := noNUL(r.Def.Where); err != nil {
		bad.add("where", err.Error())
	} else if err := whereSyntax(q.Get("where")); err != nil { // located in the text as sent
		bad.add("where", err.Error())
	}
	params, err := parseParams(q)
	if err == nil {
		err = paramsText(params)
	}
	if err != nil {
		bad.add("params", err.Error())
	}
	r.Def.Params = params
	if c, ok := q["columns"]; ok {
		cols, err := ParseColumns(strings.Join(c, ","))
		if err != nil {
			bad.add("columns", err.Error())
		}
		r.Def.Columns = cols
	}
	switch r.Def.Replica = q.Get("replica"); r.Def.Replica {
	case "":
		r.Def.Replica = "default"
	case "default", "full":
	default:
		bad.add("replica", "is invalid")
	}
	switch r.Def.Log = q.Get("log"); r.Def.Log {
	case "":
		r.Def.Log = "full"
	case "full", "changes_only":
	default:
		bad.add("log", "is invalid")
	}
	off, ok := q["offset"]
	switch {
	case !ok || off[0] == "":
		bad.add("offset", "can't be blank")
	default:
		o, now, err := ParseOffset(off[0])
		if err == nil {
			err = offsetInRange(off[0])
		}
		if err != nil {
			bad.add("offset", err.Error())
		}
		r.Offset, r.Now = o, now
	}
	r.Handle = q.Get("handle")
	if r.Handle == "" {
		r.Handle = q.Get("shape_handle") // older clients
	}
	r.Live = q.Get("live") == "true"
	r.SSE = r.Live && (q.Get("live_sse") == "true" || q.Get("experimental_live_sse") == "true")
	r.Cursor = q.Get("cursor")
	if err := cursorInRange(r.Cursor); err != nil {
		bad.add("cursor", err.Error())
	}
	if !r.Offset.Start && !r.Now && r.Handle == "" && bad.Errors["offset"] == nil {
		bad.add("handle", "can't be blank when offset != -1")
	}
	if r.Live && (r.Offset.Start || r.Now) {
		bad.add("live", "can't be true when offset is -1 or now")
	}
	sub, subErrs := ParseSubset(q)
	for f, msgs := range subErrs {
		for _, m := range msgs {
			bad.addSubset(f, m)
		}
	}
	r.Subset = sub
	if bad.Errors != nil || bad.Subset != nil {
		return nil, bad
	}
	return r, nil
}

// parseParams reads params[1], params[2], ... (also params as a JSON
// array or object, which some clients send).
func parseParams(q url.Values) ([]string, error) {
	byIndex := map[int]string{}
	for k, v := range q {
		rest, ok := strings.CutPrefix(k, "params[")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(rest, "]"))
		if err != nil || !strings.HasSuffix(rest, "]") || n < 1 || n > maxParams {
			return nil, fmt.Errorf("parameter %s is not params[1] .. params[%d]", k, maxParams)
		}
		byIndex[n] = v[0]
	}
	if p := q.Get("params"); p != "" {
		var list []string
		var obj map[string]string
		switch {
		case json.Unmarshal([]byte(p), &list) == nil:
			for i, v := range list {
				byIndex[i+1] = v
			}
		case json.Unmarshal([]byte(p), &obj) == nil:
			for k, v := range obj {
				n, err := strconv.Atoi(k)
				if err != nil || n < 1 || n > maxParams {
					return nil, fmt.Errorf("key %q is not a parameter number 1 .. %d", k, maxParams)
				}
				byIndex[n] = v
			}
		default:
			return nil, fmt.Errorf("is not a JSON array or object of strings")
		}
	}
	if len(byIndex) == 0 {
		return nil, nil
	}
	out := make([]string, len(byIndex))
	for i := range out {
		v, ok := byIndex[i+1]
		if !ok {
			return nil, fmt.Errorf("params must be numbered 1 .. %d without gaps (params[%d] is missing)", len(byIndex), i+1)
		}
		out[i] = v
	}
	return out, nil
}

// paramsText checks that every parameter is text Postgres can hold.
func paramsText(params []string) error {
	for i, p := range params {
		if err := noNUL(p); err != nil {
			return fmt.Errorf("params[%d] %v", i+1, err)
		}
	}
	return nil
}

// ParseTable reads "table", "schema.table" or quoted forms of either;
// unquoted names fold to lower case.
func ParseTable(s string) (schema, table string, err error) {
	parts, err := splitIdents(s, '.')
	if err != nil {
		return "", "", err
	}
	switch len(parts) {
	case 1:
		return "public", parts[0], nil
	case 2:
		return parts[0], parts[1], nil
	}
	return "", "", fmt.Errorf("is not table or schema.table")
}

// ParseColumns reads a comma list of column names, quoted (1.5 clients) or not.
func ParseColumns(s string) ([]string, error) {
	cols, err := splitIdents(s, ',')
	if err != nil {
		return nil, err
	}
	if len(cols) > maxColumns {
		return nil, fmt.Errorf("lists more than %d columns", maxColumns)
	}
	return cols, nil
}

// splitIdents splits s at sep into identifiers: "quoted" (with "" for a
// quote) or bare, which fold to lower case and may not hold quotes.
func splitIdents(s string, sep byte) ([]string, error) {
	var out []string
	i := 0
	for {
		for i < len(s) && s[i] == ' ' {
			i++
		}
		var id string
		if i < len(s) && s[i] == '"' {
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					closed = true
					break
				}
				b.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("has an unterminated quoted identifier")
			}
			id = b.String()
		} else {
			j := i
			for j < len(s) && s[j] != sep {
				j++
			}
			id = strings.ToLower(strings.TrimSpace(s[i:j]))
			if strings.ContainsAny(id, `"`) {
				return nil, fmt.Errorf("has a quote inside an unquoted identifier")
			}
			i = j
		}
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if id == "" {
			return nil, fmt.Errorf("has an empty identifier")
		}
		if strings.ContainsAny(id, ".\x00") {
			return nil, fmt.Errorf("identifier %q holds a dot or NUL, which this server does not support", id)
		}
		out = append(out, id)
		if i == len(s) {
			return out, nil
		}
		if s[i] != sep {
			return nil, fmt.Errorf("has %q after an identifier where %q or the end was expected", s[i], sep)
		}
		i++
	}
}
