package ingest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fanout/pipeline/fanout"
)

// identPattern keeps slot and publication names safe to put in SQL unquoted.
var identPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ErrSlotLost wraps the error of a break of continuity when
// ingest.on_continuity_break is stop: the slot is gone, invalidated, moved
// or replaced, or the publication is gone, so changes were lost and
// replication cannot simply resume; an operator decides.
var ErrSlotLost = errors.New("replication continuity broken")

// createPublication makes the publication FOR ALL TABLES: shapes can be
// added on any table at any time.
func createPublication(ctx context.Context, conn *pgx.Conn, publication string) error {
	if _, err := conn.Exec(ctx, "CREATE PUBLICATION "+publication+" FOR ALL TABLES"); err != nil {
		return fmt.Errorf("create publication %s: %w (the user needs superuser or pg_create_publication rights)", publication, err)
	}
	return nil
}

// createSlot makes the logical slot and returns where it starts. On
// Postgres 17 and later it is made with failover = true, so that standbys
// that synchronize slots (sync_replication_slots) keep it through a
// promotion (deploy/PRODUCTION.md).
func createSlot(ctx context.Context, conn *pgx.Conn, slot string) (pglogrepl.LSN, error) {
	version, err := serverVersion(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: read server_version_num: %w", slot, err)
	}
	q := "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
	if version >= 170000 {
		q = "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
	}
	var lsn string
	if err := conn.QueryRow(ctx, q, slot).Scan(&lsn); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55000" {
			return 0, fmt.Errorf("create replication slot %s: %w (set wal_level = logical in postgresql.conf and restart Postgres)", slot, err)
		}
		return 0, fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return pglogrepl.ParseLSN(lsn)
}

// slotDropWait bounds how long dropSlot waits for the slot's previous
// reader (ingest's own ended session) to let go of it.
const slotDropWait = 30 * time.Second

// dropSlot drops the slot if it exists, waiting (bounded) while a
// walsender still holds it.
func dropSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	deadline := time.Now().Add(slotDropWait)
	for {
		_, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" {
			if err != nil {
				return fmt.Errorf("drop replication slot %s: %w", slot, err)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drop replication slot %s: still in use after %s: %w (another ingest with the same postgres.slot?)", slot, slotDropWait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
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

// isSlotGone reports errors of START_REPLICATION saying the slot is gone
// or invalidated: a break of continuity, which the next check decides.
func isSlotGone(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	// 42704: slot does not exist (the same code says a publication does
	// not exist: isPublicationGone); 55000: slot invalidated ("can no
	// longer get changes").
	return pgErr.Code == "42704" && strings.Contains(pgErr.Message, "replication slot") ||
		(pgErr.Code == "55000" && (strings.Contains(pgErr.Message, "invalidated") || strings.Contains(pgErr.Message, "no longer")))
}
