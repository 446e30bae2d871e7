// Package pgtree walks Postgres parse trees (pg_query_go): every *pg.Node
// under a message, with its depth, so a check over a whole where clause
// (its cost, the schemas it names, the tables it reads) is one visitor
// rather than a case for each of the parser's node kinds.
package pgtree

import (
	"errors"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// SkipChildren returned by a visitor skips the node's children.
var SkipChildren = errors.New("skip children")

// Walk calls visit for every *pg.Node inside m (m itself included when it
// is one), parents before children. depth is 1 for the outermost nodes and
// grows by one per node between them and the root. A visitor error other
// than SkipChildren stops the walk and is returned.
func Walk(m proto.Message, visit func(n *pg.Node, depth int) error) error {
	if m == nil {
		return nil
	}
	return walk(m.ProtoReflect(), 0, visit)
}

func walk(m protoreflect.Message, depth int, visit func(*pg.Node, int) error) error {
	if n, ok := m.Interface().(*pg.Node); ok {
		depth++
		switch err := visit(n, depth); {
		case errors.Is(err, SkipChildren):
			return nil
		case err != nil:
			return err
		}
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil || fd.IsMap() {
			return true
		}
		if fd.IsList() {
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = walk(l.Get(i).Message(), depth, visit)
			}
		} else {
			err = walk(v.Message(), depth, visit)
		}
		return err == nil
	})
	return err
}

// Names are the strings of a qualified name (a function's, an operator's, a
// type's): ["pg_catalog", "int4"].
func Names(nodes []*pg.Node) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.GetString_().GetSval())
	}
	return out
}
