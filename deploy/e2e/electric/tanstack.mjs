// Syncs a shape into a TanStack DB collection with the unmodified
// @tanstack/electric-db-collection and prints, as JSON lines on stdout,
// what the application sees. Driven by deploy/e2e (Go).
//
//   node tanstack.mjs '{"url":"http://127.0.0.1:3000/v1/shape","params":{"table":"items"},
//     "mode":"eager","key":"id","groupBy":"batch"}'
//
// args.mode: "eager", "progressive" or "on-demand" (syncMode). With
// args.query ({"gt":["score",10],"orderBy":"id","limit":20}) a live query
// over the collection is what is reported (on-demand loads it through
// subset snapshots; args.subsetMethod "GET" or "POST").
//
// Events:
//   {"event":"ready"}
//   {"event":"state","count":N,"groups":{...}|"rows":[...]}  after every change batch
//        (of the live query when args.query is set)
//   {"event":"txid","txid":X,"count":N,"groups"|"rows"}      stdin "await <txid>": awaitTxId
//        resolved; the state at that moment
//   {"event":"error","message":...}
import { createCollection, createLiveQueryCollection, gt } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'
import readline from 'node:readline'

const args = JSON.parse(process.argv[2])
const print = (obj) =>
  process.stdout.write(JSON.stringify(obj, (_, v) => (typeof v === `bigint` ? v.toString() : v)) + `\n`)
const fail = (e) => {
  print({ event: `error`, message: String(e?.message ?? e), status: e?.status ?? null, detail: e?.stack ?? JSON.stringify(e) })
  process.exit(1)
}
process.on(`unhandledRejection`, fail)

const key = args.key ?? `id`
const items = createCollection(
  electricCollectionOptions({
    id: `items`,
    shapeOptions: {
      url: args.url,
      params: args.params,
      subsetMethod: args.subsetMethod ?? `GET`,
      onError: (e) => fail(e),
    },
    getKey: (row) => row[key],
    syncMode: args.mode ?? `eager`,
  })
)

let view = items
if (args.query) {
  const [col, value] = args.query.gt
  view = createLiveQueryCollection((q) => {
    let b = q.from({ i: items }).where(({ i }) => gt(i[col], value))
    if (args.query.orderBy) b = b.orderBy(({ i }) => i[args.query.orderBy])
    if (args.query.limit) b = b.limit(args.query.limit)
    return b
  })
}

const state = () => {
  const rows = view.toArray
  if (!args.groupBy) {
    return { count: rows.length, rows: [...rows].sort((a, b) => (a[key] < b[key] ? -1 : 1)) }
  }
  const groups = {}
  for (const r of rows) groups[r[args.groupBy]] = (groups[r[args.groupBy]] ?? 0) + 1
  return { count: rows.length, groups }
}

view.subscribeChanges(() => print({ event: `state`, ...state() }), { includeInitialState: false })
await view.preload()
print({ event: `ready` })
print({ event: `state`, ...state() })

// Commands on stdin: "await <txid>" waits for the txid with awaitTxId.
const rl = readline.createInterface({ input: process.stdin })
rl.on(`line`, async (line) => {
  const [cmd, arg] = line.trim().split(/\s+/)
  if (cmd === `await`) {
    try {
      await items.utils.awaitTxId(Number(arg), 30000)
      print({ event: `txid`, txid: arg, ...state() })
    } catch (e) {
      fail(e)
    }
  }
})
process.on(`SIGTERM`, () => process.exit(0))
