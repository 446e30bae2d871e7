package match

import "github.com/fanout/pipeline/fanout"

// itemsSchema is public.items as the tests define it.
var itemsSchema = []fanout.Column{
	{Name: "id", Type: "integer", OID: 23},
	{Name: "owner", Type: "integer", OID: 23},
	{Name: "title", Type: "text", OID: 25},
	{Name: "flag", Type: "boolean", OID: 16},
	{Name: "price", Type: "numeric", OID: 1700},
	{Name: "created", Type: "timestamp with time zone", OID: 1184},
	{Name: "doc", Type: "jsonb", OID: 3802},
}

func str(s string) *string { return &s }
