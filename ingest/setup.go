package ingest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout"
)

// identPattern keeps slot and publication names safe to put in SQL unquoted.
var identPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ErrSlotLost means the slot is gone or invalidated: the WAL it needed was
// removed, so changes were lost and replication cannot resume. Retrying
// does not help; an operator must act.
var ErrSlotLost = errors.New("replication slot lost")

// SlotState is what Setup found or created.
type SlotState struct {
	// ConfirmedFlush is where replication resumes.
	ConfirmedFlush pglogrepl.LSN
	Created        bool
}

// Setup makes sure the publication and the logical slot exist and that the
// slot is usable. A slot created here starts at the current WAL position.
// A missing slot is created only when mayCreate is set: once ingest has
// streamed from a slot, its disappearance means lost changes, not a fresh start.
func Setup(ctx context.Context, conn *pgx.Conn, slot, publication string, mayCreate bool) (SlotState, error) {
	var st SlotState
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", publication).Scan(&exists); err != nil {
		return st, fmt.Errorf("look up publication %s: %w", publication, err)
	}
	if !exists {
		// FOR ALL TABLES: shapes can be added on any table at any time.
		if _, err := conn.Exec(ctx, "CREATE PUBLICATION "+publication+" FOR ALL TABLES"); err != nil {
			return st, fmt.Errorf("create publication %s: %w (the user needs superuser or pg_create_publication rights)", publication, err)
		}
	}

	var plugin, walStatus *string
	var confirmed *string
	err := conn.QueryRow(ctx, `SELECT plugin, wal_status, confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &walStatus, &confirmed)
	switch {
	case errors.Is(err, pgx.ErrNoRows) && !mayCreate:
		return st, fmt.Errorf("%w: slot %s does not exist although ingest streamed from it before (the %s key in the %s bucket says so); "+
			"it was dropped, so changes since then are lost. Rebuild the shapes, then delete that key (nats kv del %s %s) and start ingest again to create a new slot",
			ErrSlotLost, slot, fanout.KeyIngestPublished, fanout.StateBucket, fanout.StateBucket, fanout.KeyIngestPublished)
	case errors.Is(err, pgx.ErrNoRows):
		var lsn string
		if err := conn.QueryRow(ctx, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", slot).Scan(&lsn); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "55000" {
				return st, fmt.Errorf("create replication slot %s: %w (set wal_level = logical in postgresql.conf and restart Postgres)", slot, err)
			}
			return st, fmt.Errorf("create replication slot %s: %w", slot, err)
		}
		st.Created = true
		st.ConfirmedFlush, err = pglogrepl.ParseLSN(lsn)
		return st, err
	case err != nil:
		return st, fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	if plugin == nil || *plugin != "pgoutput" {
		return st, fmt.Errorf("replication slot %s exists but is not a pgoutput logical slot; drop it or set postgres.slot to another name", slot)
	}
	if walStatus != nil && *walStatus == "lost" {
		return st, fmt.Errorf("%w: slot %s has wal_status = lost, Postgres removed WAL it still needed, so changes since its confirmed position are gone; "+
			"drop the slot (SELECT pg_drop_replication_slot('%s')) and the %s key (nats kv del %s %s), restart ingest to create a new slot, and rebuild the shapes (their logs miss changes)",
			ErrSlotLost, slot, slot, fanout.KeyIngestPublished, fanout.StateBucket, fanout.KeyIngestPublished)
	}
	if confirmed == nil {
		return st, fmt.Errorf("replication slot %s has no confirmed_flush_lsn; drop it and restart ingest", slot)
	}
	st.ConfirmedFlush, err = pglogrepl.ParseLSN(*confirmed)
	return st, err
}

// SetReplicaIdentityFull makes updates and deletes of table carry the whole
// old row, so a row moving out of a shape can be matched against its where.
func SetReplicaIdentityFull(ctx context.Context, conn *pgx.Conn, table string) error {
	schema, name := fanout.SplitTable(table)
	ident := pgx.Identifier{schema, name}.Sanitize()
	var current string
	err := conn.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", ident).Scan(&current)
	if err != nil {
		return fmt.Errorf("look up table %s: %w", table, err)
	}
	if current == "f" {
		return nil
	}
	if _, err := conn.Exec(ctx, "ALTER TABLE "+ident+" REPLICA IDENTITY FULL"); err != nil {
		return fmt.Errorf("ALTER TABLE %s REPLICA IDENTITY FULL: %w (the user must own the table; or set postgres.replica_identity_full=false and do it yourself)", table, err)
	}
	return nil
}

// isSlotGone reports errors from START_REPLICATION that retrying cannot fix.
func isSlotGone(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	// 42704: slot does not exist; 55000: slot invalidated ("can no longer get changes").
	return pgErr.Code == "42704" ||
		(pgErr.Code == "55000" && (strings.Contains(pgErr.Message, "invalidated") || strings.Contains(pgErr.Message, "no longer")))
}
