package match

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// walkNodes calls f for every *pg.Node in m's tree, parents before their
// children, in field order (which is the order of the SQL text for the
// expressions where clauses hold). f may replace the node's content; the
// walk then descends into the replacement.
func walkNodes(m proto.Message, f func(n *pg.Node)) {
	walkMessage(m.ProtoReflect(), f)
}

func walkMessage(m protoreflect.Message, f func(n *pg.Node)) {
	if n, ok := m.Interface().(*pg.Node); ok {
		f(n)
		m = n.ProtoReflect() // f may have swapped the oneof
	}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Kind() != protoreflect.MessageKind || !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for j := 0; j < l.Len(); j++ {
				walkMessage(l.Get(j).Message(), f)
			}
		case fd.IsMap():
			// pg_query's tree has no maps.
		default:
			walkMessage(v.Message(), f)
		}
	}
}
