package shapes

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fanout/pipeline/fanout/testenv"
)

func TestTableAllowed(t *testing.T) {
	for _, tc := range []struct {
		schema, table string
		allow         []string
		ok            bool
	}{
		{"public", "items", nil, true},
		{"pg_catalog", "pg_authid", nil, false},
		{"pg_catalog", "pg_statistic", []string{"pg_catalog.*"}, false},
		{"information_schema", "tables", nil, false},
		{"pg_toast", "pg_toast_1234", nil, false},
		{"pg_temp_3", "t", nil, false},
		{"public", "items", []string{"public.items"}, true},
		{"public", "other", []string{"public.items"}, false},
		{"app", "x", []string{"public.items", "app.*"}, true},
		{"private", "secrets", []string{"public.*"}, false},
	} {
		err := TableAllowed(tc.schema, tc.table, tc.allow)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrTableNotServed) {
			t.Errorf("TableAllowed(%s.%s, %v) = %v, want ok %v", tc.schema, tc.table, tc.allow, err, tc.ok)
		}
	}
}

func TestCheckServedFollowsThePublication(t *testing.T) {
	pgsrv := testenv.StartPostgres(t)
	conn := pgsrv.Connect(t)
	pgsrv.Exec(t, conn, `CREATE TABLE items (id int PRIMARY KEY); CREATE SCHEMA private; CREATE TABLE private.secrets (id int PRIMARY KEY)`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := CheckServed(ctx, conn, "pub", "public", "items", nil); err == nil || errors.Is(err, ErrTableNotServed) {
		t.Fatalf("no publication yet: %v, want an error that is not a 400", err)
	}
	pgsrv.Exec(t, conn, `CREATE PUBLICATION pub FOR TABLE items`)
	if err := CheckServed(ctx, conn, "pub", "public", "items", nil); err != nil {
		t.Fatalf("a published table: %v", err)
	}
	for _, tc := range [][2]string{{"private", "secrets"}, {"pg_catalog", "pg_authid"}, {"pg_catalog", "pg_statistic"}} {
		if err := CheckServed(ctx, conn, "pub", tc[0], tc[1], nil); !errors.Is(err, ErrTableNotServed) {
			t.Errorf("%s.%s: %v, want ErrTableNotServed", tc[0], tc[1], err)
		}
	}
	pgsrv.Exec(t, conn, `ALTER PUBLICATION pub ADD TABLE private.secrets`)
	if err := CheckServed(ctx, conn, "pub", "private", "secrets", []string{"public.*"}); !errors.Is(err, ErrTableNotServed) {
		t.Errorf("published but not in api.tables: %v", err)
	}
}
