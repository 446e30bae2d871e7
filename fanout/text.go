package fanout

// TextSettings are the session settings of every connection whose output
// becomes a value in a shape log: the replication connection (pgoutput
// prints with the walsender's settings) and the snapshot reads. With the
// same settings on both, a value prints alike whether it came from the
// initial snapshot or from a streamed change, whatever the server's defaults.
var TextSettings = map[string]string{
	"DateStyle":          "ISO",
	"TimeZone":           "UTC",
	"bytea_output":       "hex",
	"extra_float_digits": "1",
	"IntervalStyle":      "iso_8601",
}
