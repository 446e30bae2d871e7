package ingest

import (
	"bytes"
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/fanout/pipeline/fanout"
)

// walMsg is one message of the replication stream: either WAL data (one
// pgoutput message) or a keepalive.
type walMsg struct {
	xlog      *pglogrepl.XLogData
	keepalive *pglogrepl.PrimaryKeepaliveMessage
}

// connectReplication opens a logical replication connection to the
// database. The URL may name several hosts (with target_session_attrs, the
// one accepting writes is chosen), in URL or key=value form.
func connectReplication(ctx context.Context, pgURL string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(pgURL)
	if err != nil {
		return nil, fmt.Errorf("postgres.url: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range fanout.TextSettings { // values print as the snapshot reads print them
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w (check postgres.url and that the user has the REPLICATION attribute)", err)
	}
	return conn, nil
}

// startReplication streams the slot from its confirmed position (LSN 0 makes
// Postgres resume from confirmed_flush_lsn) with pgoutput protocol 1.
func startReplication(ctx context.Context, conn *pgconn.PgConn, slot, publication string) error {
	err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	})
	if err != nil {
		return fmt.Errorf("START_REPLICATION of slot %s: %w", slot, err)
	}
	return nil
}

// receive reads the replication stream into out until ctx ends or the
// connection fails. A keepalive that asks for a reply also calls
// replyRequested at once, so the answer does not wait behind queued data.
func receive(ctx context.Context, conn *pgconn.PgConn, out chan<- walMsg, replyRequested func()) error {
	for {
		raw, err := conn.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("replication stream: %w", err)
		}
		var m walMsg
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				if k.ReplyRequested {
					replyRequested()
				}
				m.keepalive = &k
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse WAL data: %w", err)
				}
				// The connection reuses its buffer for the next message.
				x.WALData = bytes.Clone(x.WALData)
				m.xlog = &x
			default:
				continue
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return fmt.Errorf("replication stream: Postgres ended the stream (server shutting down?)")
		default:
			continue
		}
		if m.keepalive != nil {
			// Its reply is asked for already; to the loop it only says the
			// slot may be idle, which it is not while data waits: never
			// wait behind routing for it.
			select {
			case out <- m:
			default:
			}
			continue
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return nil
		}
	}
}
