package match

import (
	"strings"

	"github.com/fanout/pipeline/fanout"
)

// kind is the Postgres type of a column or constant, as far as matching cares.
type kind uint8

const (
	kUnknown kind = iota // a quoted literal (or NULL) whose type comes from the other side
	kInt2
	kInt4
	kInt8
	kNumeric
	kFloat4
	kFloat8
	kText
	kVarchar
	kBpchar
	kBool
	kUUID
	kDate
	kTimestamp
	kTimestamptz
	// Kinds below are evaluated by the general evaluator only (typed.go).
	kTime
	kInterval
	kEnum
	kJSON
	kJSONB
)

var kindNames = map[kind]string{
	kUnknown: "unknown", kInt2: "smallint", kInt4: "integer", kInt8: "bigint",
	kNumeric: "numeric", kFloat4: "real", kFloat8: "double precision", kText: "text",
	kVarchar: "character varying", kBpchar: "character", kBool: "boolean", kUUID: "uuid",
	kDate: "date", kTimestamp: "timestamp without time zone", kTimestamptz: "timestamp with time zone",
	kTime: "time without time zone", kInterval: "interval", kEnum: "enum", kJSON: "json", kJSONB: "jsonb",
}

func (k kind) String() string { return kindNames[k] }

// supportedTypes is printed when a where clause uses a column of another type.
const supportedTypes = "smallint, integer, bigint, numeric, real, double precision, text, character varying, character, boolean, uuid, date, time, timestamp, timestamptz, interval, enums, json, jsonb, and one- or more-dimensional arrays of these"

// kindOfColumn maps a schema column to its kind: by type OID first (what
// pgoutput reports), then by the format_type name.
func kindOfColumn(c fanout.Column) (kind, bool) {
	switch c.OID {
	case 21:
		return kInt2, true
	case 23:
		return kInt4, true
	case 20:
		return kInt8, true
	case 1700:
		return kNumeric, true
	case 700:
		return kFloat4, true
	case 701:
		return kFloat8, true
	case 25:
		return kText, true
	case 1043:
		return kVarchar, true
	case 1042:
		return kBpchar, true
	case 16:
		return kBool, true
	case 2950:
		return kUUID, true
	case 1082:
		return kDate, true
	case 1114:
		return kTimestamp, true
	case 1184:
		return kTimestamptz, true
	case 1083:
		return kTime, true
	case 1186:
		return kInterval, true
	case 114:
		return kJSON, true
	case 3802:
		return kJSONB, true
	}
	if c.OID != 0 {
		return kUnknown, false
	}
	return kindOfTypeName(c.Type)
}

// kindOfTypeName maps a type name (format_type output or a cast's name) to a kind.
func kindOfTypeName(name string) (kind, bool) {
	switch strings.ToLower(name) {
	case "int2", "smallint":
		return kInt2, true
	case "int4", "int", "integer":
		return kInt4, true
	case "int8", "bigint":
		return kInt8, true
	case "numeric", "decimal":
		return kNumeric, true
	case "float4", "real":
		return kFloat4, true
	case "float8", "double precision", "float":
		return kFloat8, true
	case "text":
		return kText, true
	case "varchar", "character varying":
		return kVarchar, true
	case "bpchar", "char", "character":
		return kBpchar, true
	case "bool", "boolean":
		return kBool, true
	case "uuid":
		return kUUID, true
	case "date":
		return kDate, true
	case "timestamp", "timestamp without time zone":
		return kTimestamp, true
	case "timestamptz", "timestamp with time zone":
		return kTimestamptz, true
	case "time", "time without time zone":
		return kTime, true
	case "interval":
		return kInterval, true
	case "json":
		return kJSON, true
	case "jsonb":
		return kJSONB, true
	}
	return kUnknown, false
}

// domain is the type two values are compared in, after Postgres's implicit
// casts: an integer column compared with 1.5 is compared as numeric.
type domain uint8

const (
	dInt domain = iota + 1
	dNumeric
	dFloat
	dText   // byte order (the clusters run with locale C)
	dBpchar // like dText, trailing spaces of both sides ignored
	dBool
	dUUID
	dTime // microseconds since 1970-01-01 00:00 UTC; dates at midnight
)

func isInt(k kind) bool      { return k == kInt2 || k == kInt4 || k == kInt8 }
func isFloat(k kind) bool    { return k == kFloat4 || k == kFloat8 }
func isNumber(k kind) bool   { return isInt(k) || k == kNumeric || isFloat(k) }
func isString(k kind) bool   { return k == kText || k == kVarchar || k == kBpchar }
func isTemporal(k kind) bool { return k == kDate || k == kTimestamp || k == kTimestamptz }

// commonDomain is the domain Postgres compares a and b in, following its
// operator resolution for these types; ok is false when Postgres has no such
// operator. Neither side may be kUnknown.
func commonDomain(a, b kind) (domain, bool) {
	switch {
	case isNumber(a) && isNumber(b):
		if isFloat(a) || isFloat(b) {
			return dFloat, true
		}
		if a == kNumeric || b == kNumeric {
			return dNumeric, true
		}
		return dInt, true
	case isString(a) && isString(b):
		if a == kText || b == kText {
			return dText, true
		}
		if a == kBpchar || b == kBpchar {
			return dBpchar, true
		}
		return dText, true
	case a == kBool && b == kBool:
		return dBool, true
	case a == kUUID && b == kUUID:
		return dUUID, true
	case isTemporal(a) && isTemporal(b):
		return dTime, true
	}
	return 0, false
}
