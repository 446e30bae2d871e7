// Syncs shapes into PGlite with the unmodified @electric-sql/pglite-sync
// (syncShapesToTables: transactions across shapes are applied together) and
// prints, as JSON lines on stdout, what the application's database holds
// after every transaction PGlite commits. Driven by deploy/e2e (Go).
//
//   node pglite.mjs '{"url":"http://127.0.0.1:3000/v1/shape","ddl":"CREATE TABLE ...",
//     "shapes":{"a":{"params":{"table":"a"},"table":"a","primaryKey":["id"]}},
//     "key":"sync1","dataDir":"/tmp/pg1","groupBy":"batch"}'
//
// Events:
//   {"event":"ready"}                      the sync is running
//   {"event":"initial"}                    onInitialSync
//   {"event":"state","at":ms,"tables":{"a":{"count":N,"groups":{"1":10},"rows":[...]}}}
//        after each commit: per table, its rows (ordered by primary key) or,
//        with groupBy, the row count of each value of that column (and no rows);
//        with visible, the ids that became visible ("ids")
//   {"event":"visible","at":ms,"table":"a","ids":[7,8]}
//        with track (a numeric column, "id"): instead of state events, the
//        values of that column above the highest one seen before, per commit
//        (for latency: when each inserted row became visible)
//   {"event":"up-to-date","shape":"a","lsn":"123","at":ms,"seen":["1","2"]}
//        every up-to-date message a shape stream received (its watermark);
//        with groupBy, seen lists the groupBy values of every insert the
//        stream received before it
//   {"event":"error","message":...}
import { PGlite } from '@electric-sql/pglite'
import { electricSync } from '@electric-sql/pglite-sync'

const args = JSON.parse(process.argv[2])
const print = (obj) => process.stdout.write(JSON.stringify(obj) + `\n`)
const fail = (e, where = ``) => {
  print({ event: `error`, where, message: String(e?.message ?? e), status: e?.status ?? null, detail: e?.stack ?? JSON.stringify(e) ?? null })
  process.exit(1)
}
// pglite-sync's MultiShapeStream (@electric-sql/experimental 1.0.14)
// refreshes shapes from timers and leaves their promises unhandled: a
// rejection is reported (and fails the test), with every one that follows.
process.on(`unhandledRejection`, (e) => {
  print({ event: `error`, where: `unhandled rejection`, message: String(e?.message ?? e), detail: e?.stack ?? JSON.stringify(e) ?? null })
  setTimeout(() => process.exit(1), 500)
})

// args.traceFetch: every request, response and abort on stderr (debugging).
if (args.traceFetch) {
  const realFetch = globalThis.fetch
  globalThis.fetch = async (url, opts) => {
    const t0 = Date.now()
    const u = String(url).replace(/^.*\?/, ``)
    opts?.signal?.addEventListener(`abort`, () => process.stderr.write(`${Date.now()} ABORT ${u} reason=${String(opts.signal.reason)}\n`))
    try {
      const r = await realFetch(url, opts)
      process.stderr.write(`${Date.now()} RESP ${r.status} +${Date.now() - t0}ms ${u} off=${r.headers.get(`electric-offset`)} utd=${r.headers.has(`electric-up-to-date`)}\n`)
      return r
    } catch (e) {
      process.stderr.write(`${Date.now()} FAIL +${Date.now() - t0}ms ${u} ${e}\n`)
      throw e
    }
  }
}

const pg = await PGlite.create({ dataDir: args.dataDir, extensions: { electric: electricSync() } })
await pg.exec(args.ddl)

// A commit of the sync shows as a notification per changed table: the
// state is printed once per commit, after it.
const tables = Object.values(args.shapes).map((s) => s.table)
for (const t of tables) {
  await pg.exec(`
    CREATE OR REPLACE FUNCTION "notify_${t}"() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('synced', '${t}'); RETURN NULL; END $$;
    DROP TRIGGER IF EXISTS "notify_${t}" ON "${t}";
    CREATE TRIGGER "notify_${t}" AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "${t}"
      FOR EACH STATEMENT EXECUTE FUNCTION "notify_${t}"();`)
}

let pending = null
const highest = {}
const dump = async () => {
  pending = null
  const at = Date.now()
  if (args.track) {
    for (const s of Object.values(args.shapes)) {
      const t = s.table
      const r = await pg.query(`SELECT "${args.track}" AS v FROM "${t}" WHERE "${args.track}" > $1 ORDER BY 1`, [highest[t] ?? -1])
      if (r.rows.length > 0) {
        highest[t] = r.rows[r.rows.length - 1].v
        print({ event: `visible`, at, table: t, ids: r.rows.map((x) => x.v) })
      }
    }
    return
  }
  const out = {}
  for (const [name, s] of Object.entries(args.shapes)) {
    const t = s.table
    if (args.groupBy) {
      const r = await pg.query(`SELECT "${args.groupBy}"::text AS g, count(*)::int AS n FROM "${t}" GROUP BY 1`)
      const groups = {}
      let count = 0
      for (const row of r.rows) {
        groups[row.g] = row.n
        count += row.n
      }
      out[name] = { count, groups }
    } else {
      const order = s.primaryKey.map((c) => `"${c}"`).join(`, `)
      const r = await pg.query(`SELECT * FROM "${t}" ORDER BY ${order}`)
      out[name] = { count: r.rows.length, rows: r.rows }
    }
  }
  print({ event: `state`, at, tables: out })
}
await pg.listen(`synced`, () => {
  if (!pending) pending = setTimeout(() => dump().catch((e) => fail(e, `dump`)), 0)
})

const shapes = {}
for (const [name, s] of Object.entries(args.shapes)) {
  shapes[name] = {
    shape: { url: args.url, params: s.params },
    table: s.table,
    primaryKey: s.primaryKey,
  }
}
const sync = await pg.electric.syncShapesToTables({
  shapes,
  key: args.key ?? null,
  onInitialSync: () => print({ event: `initial` }),
  onError: (e) => fail(e, `pglite-sync onError`),
  debug: !!args.debug,
})
for (const [name, stream] of Object.entries(sync.streams)) {
  const seen = new Set()
  stream.subscribe(
    (messages) => {
      for (const m of messages) {
        if (args.groupBy && m.headers?.operation === `insert` && m.value?.[args.groupBy] !== undefined) {
          seen.add(String(m.value[args.groupBy]))
        }
        if (m.headers?.control === `must-refetch`) seen.clear()
        if (m.headers?.control === `up-to-date`) {
          print({ event: `up-to-date`, shape: name, lsn: m.headers.global_last_seen_lsn, at: Date.now(), seen: [...seen] })
        }
      }
    },
    (e) => fail(e, `stream ${name}`)
  )
}
print({ event: `ready` })
await dump()

const stop = async () => {
  sync.unsubscribe()
  await pg.close()
  process.exit(0)
}
process.on(`SIGTERM`, () => stop().catch(() => process.exit(1)))
