package snapshot

import "github.com/fanout/pipeline/fanout"

// sessionSettings make snapshot values print as pgoutput prints them (the
// replication connection uses the same). The pool adds search_path
// pg_catalog, pg_temp (consumers/pgpool); the query is wheresql.Select.
var sessionSettings = fanout.TextSettings
