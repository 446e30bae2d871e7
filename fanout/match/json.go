package match

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// json and jsonb: IS NULL, and = / <> on jsonb (Postgres has no json =).

func checkJSON(s string) error {
	if !json.Valid([]byte(s)) {
		return fmt.Errorf("%q is not valid json", s)
	}
	return nil
}

// canonicalJSONB is jsonb's output text: object keys ordered by length then
// bytes, the last of duplicate keys kept, numbers as numeric prints them.
func canonicalJSONB(s string) (string, error) {
	v, err := decodeJSON(s)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := writeJSONB(&b, v, false); err != nil {
		return "", err
	}
	return b.String(), nil
}

// jsonbKey is the text two jsonb values are equal by: numbers compared by value.
func jsonbKey(s string) string {
	v, err := decodeJSON(s)
	if err != nil {
		return s
	}
	var b strings.Builder
	if writeJSONB(&b, v, true) != nil {
		return s
	}
	return b.String()
}

// jsonObject keeps an object's members after duplicates were dropped.
type jsonObject map[string]any

func decodeJSON(s string) (any, error) {
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	v, err := readJSON(d)
	if err != nil {
		return nil, fmt.Errorf("%q is not valid json: %v", s, err)
	}
	if _, err := d.Token(); err == nil {
		return nil, fmt.Errorf("%q is not valid json: trailing data", s)
	}
	return v, nil
}

func readJSON(d *json.Decoder) (any, error) {
	t, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch x := t.(type) {
	case json.Delim:
		switch x {
		case '{':
			obj := jsonObject{}
			for d.More() {
				k, err := d.Token()
				if err != nil {
					return nil, err
				}
				v, err := readJSON(d)
				if err != nil {
					return nil, err
				}
				obj[k.(string)] = v
			}
			_, err := d.Token()
			return obj, err
		case '[':
			var arr []any
			for d.More() {
				v, err := readJSON(d)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := d.Token()
			if arr == nil {
				arr = []any{}
			}
			return arr, err
		}
	case string:
		if strings.ContainsRune(x, 0) {
			return nil, fmt.Errorf("unsupported Unicode escape sequence \\u0000")
		}
	}
	return t, nil
}

func writeJSONB(b *strings.Builder, v any, byValue bool) error {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case json.Number:
		n, err := parseNumeric(string(x))
		if err != nil {
			return err
		}
		if byValue {
			b.WriteString(n.r.RatString())
		} else {
			b.WriteString(formatNumeric(n))
		}
	case string:
		writeJSONString(b, x)
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			if err := writeJSONB(b, e, byValue); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case jsonObject:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if len(keys[i]) != len(keys[j]) {
				return len(keys[i]) < len(keys[j])
			}
			return keys[i] < keys[j]
		})
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			writeJSONString(b, k)
			b.WriteString(": ")
			if err := writeJSONB(b, x[k], byValue); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	}
	return nil
}

func writeJSONString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}
