package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout"
)

// Reading what the continuity check (continuity.go) needs from Postgres.

// readObserved reads the slot, the publication and the shaped tables'
// membership on conn, and, when repl is given, the system's identity and
// (on a new timeline) where the recorded one ended.
func readObserved(ctx context.Context, conn *pgx.Conn, repl *pgconn.PgConn, slot, publication string, shaped []string, recorded *fanout.SlotIdentity) (Observed, error) {
	obs := Observed{Shaped: shaped}
	var err error
	if repl != nil {
		if obs.System, err = readSystem(ctx, repl); err != nil {
			return obs, err
		}
		if recorded != nil && recorded.SystemID == obs.System.ID && recorded.Timeline != obs.System.Timeline && obs.System.Timeline > 1 {
			// Where the recorded timeline ended; 0 (unknown) when the
			// history cannot be read: the check then counts a break.
			if h, err := pglogrepl.TimelineHistory(ctx, repl, obs.System.Timeline); err == nil {
				obs.Switch = TimelineSwitch(h.Content, recorded.Timeline)
			}
		}
	}
	if obs.Slot, err = readSlot(ctx, conn, slot); err != nil {
		return obs, err
	}
	if obs.Publication, obs.Members, err = readPublication(ctx, conn, publication, shaped); err != nil {
		return obs, err
	}
	if err := conn.QueryRow(ctx, "SELECT pg_size_bytes(current_setting('max_slot_wal_keep_size'))").Scan(&obs.KeepSize); err != nil {
		return obs, fmt.Errorf("read max_slot_wal_keep_size: %w", err)
	}
	return obs, nil
}

func readSystem(ctx context.Context, repl *pgconn.PgConn) (*System, error) {
	r, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		return nil, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	return &System{ID: r.SystemID, Timeline: r.Timeline}, nil
}

// readSlot reads the slot's row of pg_replication_slots (nil: no slot). The
// row is read as JSON so that columns of newer versions (conflicting,
// invalidation_reason) are read where they exist.
func readSlot(ctx context.Context, conn *pgx.Conn, slot string) (*SlotRow, error) {
	var text string
	err := conn.QueryRow(ctx, "SELECT to_jsonb(s)::text FROM pg_replication_slots s WHERE slot_name = $1", slot).Scan(&text)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read replication slot %s from pg_replication_slots: %w", slot, err)
	}
	return parseSlotRow([]byte(text))
}

// parseSlotRow reads a pg_replication_slots row as to_jsonb prints it.
func parseSlotRow(data []byte) (*SlotRow, error) {
	var r struct {
		Plugin             *string      `json:"plugin"`
		SlotType           string       `json:"slot_type"`
		WALStatus          *string      `json:"wal_status"`
		SafeWALSize        *json.Number `json:"safe_wal_size"`
		Confirmed          *string      `json:"confirmed_flush_lsn"`
		Active             bool         `json:"active"`
		InvalidationReason *string      `json:"invalidation_reason"`
		Conflicting        *bool        `json:"conflicting"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("pg_replication_slots row %s: %w", data, err)
	}
	s := &SlotRow{SlotType: r.SlotType, Active: r.Active}
	if r.Plugin != nil {
		s.Plugin = *r.Plugin
	}
	if r.WALStatus != nil {
		s.WALStatus = *r.WALStatus
	}
	if r.SafeWALSize != nil {
		n, err := r.SafeWALSize.Int64()
		if err != nil {
			return nil, fmt.Errorf("pg_replication_slots safe_wal_size %s: %w", *r.SafeWALSize, err)
		}
		s.SafeWALSize = &n
	}
	if r.Confirmed != nil {
		lsn, err := pglogrepl.ParseLSN(*r.Confirmed)
		if err != nil {
			return nil, fmt.Errorf("pg_replication_slots confirmed_flush_lsn %q: %w", *r.Confirmed, err)
		}
		s.Confirmed = lsn
	}
	if r.InvalidationReason != nil {
		s.InvalidationReason = *r.InvalidationReason
	}
	if r.Conflicting != nil {
		s.Conflicting = *r.Conflicting
	}
	return s, nil
}

// readPublication reads the publication (nil: none) and, for each shaped
// table in it, its membership oid (0: FOR ALL TABLES; otherwise the
// pg_publication_rel row, or the pg_publication_namespace row of a FOR
// TABLES IN SCHEMA publication). Membership is what pg_publication_tables
// lists, so a partition published through its root counts too (with 0).
func readPublication(ctx context.Context, conn *pgx.Conn, publication string, shaped []string) (*PublicationRow, map[string]uint32, error) {
	var p PublicationRow
	var ins, upd, del, trunc bool
	err := conn.QueryRow(ctx, `SELECT oid, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1`, publication).
		Scan(&p.OID, &p.AllTables, &ins, &upd, &del, &trunc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read publication %s from pg_publication: %w", publication, err)
	}
	for op, on := range map[string]bool{"insert": ins, "update": upd, "delete": del, "truncate": trunc} {
		if !on {
			p.Unpublished = append(p.Unpublished, op)
		}
	}
	members := map[string]uint32{}
	if len(shaped) == 0 {
		return &p, members, nil
	}
	version, err := serverVersion(ctx, conn)
	if err != nil {
		return nil, nil, fmt.Errorf("read server_version_num: %w", err)
	}
	namespace := "0" // FOR TABLES IN SCHEMA came with Postgres 15
	if version >= 150000 {
		namespace = `(SELECT pn.oid FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
			WHERE pn.pnpubid = p.oid AND n.nspname = pt.schemaname)`
	}
	rows, err := conn.Query(ctx, `SELECT pt.schemaname || '.' || pt.tablename,
		CASE WHEN p.puballtables THEN 0 ELSE coalesce(
			(SELECT pr.oid FROM pg_publication_rel pr JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE pr.prpubid = p.oid AND n.nspname = pt.schemaname AND c.relname = pt.tablename),
			`+namespace+`, 0) END::bigint
		FROM pg_publication_tables pt JOIN pg_publication p ON p.pubname = pt.pubname
		WHERE pt.pubname = $1 AND pt.schemaname || '.' || pt.tablename = ANY($2)`, publication, shaped)
	if err != nil {
		return nil, nil, fmt.Errorf("read the tables of publication %s from pg_publication_tables: %w", publication, err)
	}
	var table string
	var oid int64
	_, err = pgx.ForEachRow(rows, []any{&table, &oid}, func() error { members[table] = uint32(oid); return nil })
	if err != nil {
		return nil, nil, fmt.Errorf("read the tables of publication %s from pg_publication_tables: %w", publication, err)
	}
	return &p, members, nil
}

// isPublicationGone reports the walsender's error for a publication
// dropped under the slot: it cannot decode past the drop.
func isPublicationGone(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42704" && strings.Contains(pgErr.Message, "publication")
}

// serverVersion is server_version_num (150004 for 15.4).
func serverVersion(ctx context.Context, conn *pgx.Conn) (int, error) {
	var v int
	err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v)
	return v, err
}
