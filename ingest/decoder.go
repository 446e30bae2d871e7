package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fanout/pipeline/fanout"
	"github.com/fanout/pipeline/fanout/match"
)

// Begin starts a transaction. FinalLSN is the LSN of its commit record: every
// fragment of the transaction carries it as its commit LSN.
type Begin struct {
	Xid        uint32
	FinalLSN   pglogrepl.LSN
	CommitTime time.Time
}

// Commit ends the transaction begun last.
type Commit struct {
	CommitLSN pglogrepl.LSN
	EndLSN    pglogrepl.LSN
}

// Handler receives decoded transactions, in WAL order. The router is one.
type Handler interface {
	Begin(ctx context.Context, b Begin) error
	Change(ctx context.Context, c match.RowChange) error
	// Truncate lists the schema-qualified tables a TRUNCATE emptied.
	Truncate(ctx context.Context, tables []string) error
	Commit(ctx context.Context, c Commit) error
}

// relation is a table as the last Relation message described it.
type relation struct {
	table   string
	columns []column
}

type column struct {
	name string
	oid  uint32
	key  bool
}

// Decoder turns pgoutput (protocol version 1) messages into row changes.
// Values stay in Postgres text format. It is used by one goroutine.
type Decoder struct {
	log       *slog.Logger
	relations map[uint32]*relation
	types     *pgtype.Map
	// warned remembers unknown types and missing TOAST values already logged.
	warned map[string]bool
	// MissingToast counts unchanged TOASTed values that had no old value to
	// take them from (the column is left out of the row).
	MissingToast int
}

// NewDecoder returns a decoder with an empty relation cache.
func NewDecoder(log *slog.Logger) *Decoder {
	return &Decoder{log: log, relations: map[uint32]*relation{}, types: pgtype.NewMap(), warned: map[string]bool{}}
}

// Decode parses one pgoutput message and passes what it means to h.
func (d *Decoder) Decode(ctx context.Context, data []byte, h Handler) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("parse pgoutput message: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		return h.Begin(ctx, Begin{Xid: m.Xid, FinalLSN: m.FinalLSN, CommitTime: m.CommitTime})
	case *pglogrepl.CommitMessage:
		return h.Commit(ctx, Commit{CommitLSN: m.CommitLSN, EndLSN: m.TransactionEndLSN})
	case *pglogrepl.RelationMessage:
		rel := d.relation(m)
		if rh, ok := h.(RelationHandler); ok {
			cols := make([]fanout.Column, len(rel.columns))
			for i, c := range rel.columns {
				cols[i] = fanout.Column{Name: c.name, OID: c.oid}
			}
			rh.Relation(rel.table, cols)
		}
		return nil
	case *pglogrepl.InsertMessage:
		rel, err := d.lookup(m.RelationID)
		if err != nil {
			return err
		}
		row, err := d.row(rel, m.Tuple, nil, false)
		if err != nil {
			return err
		}
		return h.Change(ctx, match.RowChange{Table: rel.table, Op: fanout.OpInsert, New: row})
	case *pglogrepl.UpdateMessage:
		rel, err := d.lookup(m.RelationID)
		if err != nil {
			return err
		}
		var old fanout.Row
		if m.OldTuple != nil {
			if old, err = d.row(rel, m.OldTuple, nil, m.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey); err != nil {
				return err
			}
		}
		row, err := d.row(rel, m.NewTuple, m.OldTuple, false)
		if err != nil {
			return err
		}
		// An 'O' old tuple is the whole old row (REPLICA IDENTITY FULL), 'K' its key.
		full := m.OldTuple != nil && m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld
		return h.Change(ctx, match.RowChange{Table: rel.table, Op: fanout.OpUpdate, Old: old, OldFull: full, New: row})
	case *pglogrepl.DeleteMessage:
		rel, err := d.lookup(m.RelationID)
		if err != nil {
			return err
		}
		old, err := d.row(rel, m.OldTuple, nil, m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey)
		if err != nil {
			return err
		}
		full := m.OldTuple != nil && m.OldTupleType == pglogrepl.DeleteMessageTupleTypeOld
		return h.Change(ctx, match.RowChange{Table: rel.table, Op: fanout.OpDelete, Old: old, OldFull: full})
	case *pglogrepl.TruncateMessage:
		tables := make([]string, 0, len(m.RelationIDs))
		for _, id := range m.RelationIDs {
			rel, err := d.lookup(id)
			if err != nil {
				return err
			}
			tables = append(tables, rel.table)
		}
		return h.Truncate(ctx, tables)
	default:
		// Type, Origin and logical decoding messages (our own heartbeat
		// included) carry no row changes.
		return nil
	}
}

// RelationHandler is a Handler that also hears each Relation message: the
// columns (names and type OIDs, in order) of a table, sent before its first
// change of a session and after a change of its schema.
type RelationHandler interface {
	Relation(table string, cols []fanout.Column)
}

// relation replaces the cached description: after ALTER TABLE, Postgres
// sends a new Relation message before the first change that needs it.
func (d *Decoder) relation(m *pglogrepl.RelationMessage) *relation {
	rel := &relation{table: m.Namespace + "." + m.RelationName, columns: make([]column, len(m.Columns))}
	for i, c := range m.Columns {
		rel.columns[i] = column{name: c.Name, oid: c.DataType, key: c.Flags&1 != 0}
		if _, known := d.types.TypeForOID(c.DataType); !known {
			key := fmt.Sprintf("type %s.%s %d", rel.table, c.Name, c.DataType)
			if !d.warned[key] {
				d.warned[key] = true
				d.log.Warn("column has a type ingest does not know; its values pass through as Postgres text",
					"table", rel.table, "column", c.Name, "type_oid", c.DataType)
			}
		}
	}
	d.relations[m.RelationID] = rel
	return rel
}

func (d *Decoder) lookup(id uint32) (*relation, error) {
	rel, ok := d.relations[id]
	if !ok {
		return nil, fmt.Errorf("pgoutput change for relation %d before its Relation message (protocol violation; ingest restarts from the slot)", id)
	}
	return rel, nil
}

// row converts a tuple to column -> text value. keyOnly keeps only the
// replica identity columns (the others are sent as NULL). An unchanged
// TOASTed value ('u') is taken from old, the old tuple, when it has it.
func (d *Decoder) row(rel *relation, t *pglogrepl.TupleData, old *pglogrepl.TupleData, keyOnly bool) (fanout.Row, error) {
	if t == nil {
		return nil, nil
	}
	if len(t.Columns) != len(rel.columns) {
		return nil, fmt.Errorf("table %s: tuple has %d columns, its Relation message %d (protocol violation; ingest restarts from the slot)",
			rel.table, len(t.Columns), len(rel.columns))
	}
	row := make(fanout.Row, len(t.Columns))
	for i, c := range t.Columns {
		col := rel.columns[i]
		if keyOnly && !col.key {
			continue
		}
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			row[col.name] = nil
		case pglogrepl.TupleDataTypeText:
			s := string(c.Data)
			row[col.name] = &s
		case pglogrepl.TupleDataTypeToast:
			if old != nil && i < len(old.Columns) && old.Columns[i].DataType == pglogrepl.TupleDataTypeText {
				s := string(old.Columns[i].Data)
				row[col.name] = &s
				continue
			}
			// Never emit NULL for a value that did not change: leave it out.
			d.MissingToast++
			key := "toast " + rel.table + "." + col.name
			if !d.warned[key] {
				d.warned[key] = true
				d.log.Warn("unchanged TOASTed value without an old row; the column is left out of the update (set postgres.replica_identity_full=true)",
					"table", rel.table, "column", col.name)
			}
		default:
			return nil, fmt.Errorf("table %s column %s: tuple value kind %q; ingest asks for text format (protocol version 1)", rel.table, col.name, c.DataType)
		}
	}
	return row, nil
}
