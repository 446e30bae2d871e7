// Syncs one shape with an unmodified Electric client and prints, as JSON
// lines on stdout, what the application sees. Driven by
// deploy/e2e/shapeapi_test.go:
//
//   node sync.mjs '{"client":"1.5","url":"http://127.0.0.1:3000/v1/shape","params":{"table":"items"},"sse":false}'
//
// mode "rows" (default): a ShapeStream + Shape; after every change of the
//   shape's rows: {"event":"rows","handle":...,"offset":...,"rows":[...]};
//   with args.record, each batch of messages too, before its rows (as in
//   mode "messages": what the client parsed, old_value included).
// mode "messages": a ShapeStream from args.offset/args.handle; each batch of
//   messages as {"event":"messages",...}; with args.once, exits at the first up-to-date.
// mode "subset": a Shape on a log: 'changes_only' stream; once up to date,
//   shape.requestSnapshot(args.subset), then {"event":"requested","rows":[...]}
//   (rows events follow as in mode rows); with args.fetch,
//   stream.fetchSnapshot(args.fetch) -> {"event":"fetched","metadata":...,"data":[...]}.
// Errors: {"event":"error","status":...,"message":...}, then exit 1.
const args = JSON.parse(process.argv[2])
const pkg = args.client === `1.0` ? `electric-client-1014` : `@electric-sql/client`
const { ShapeStream, Shape } = await import(pkg)

const print = (obj) =>
  process.stdout.write(
    JSON.stringify(obj, (_, v) => (typeof v === `bigint` ? { bigint: v.toString() } : v)) + `\n`
  )

const fail = (e) => {
  print({ event: `error`, status: e?.status ?? null, message: String(e?.message ?? e), json: e?.json ?? null })
  process.exit(1)
}

const options = {
  url: args.url,
  params: args.params,
  onError: (e) => fail(e),
}
if (args.sse) {
  options.liveSse = true
  options.experimentalLiveSse = true
}
if (args.offset) options.offset = args.offset
if (args.log) options.log = args.log
if (args.handle) {
  options.handle = args.handle
  options.shapeHandle = args.handle
}
const stream = new ShapeStream(options)

const mode = args.mode ?? `rows`
if (mode === `rows` || mode === `subset`) {
  if (args.record) {
    // Subscribed before the Shape is, so a batch prints before its rows.
    stream.subscribe(
      (messages) => print({ event: `messages`, handle: stream.shapeHandle, offset: stream.lastOffset, messages }),
      (e) => fail(e)
    )
  }
  const shape = new Shape(stream)
  shape.subscribe(({ rows }) => {
    print({ event: `rows`, handle: stream.shapeHandle, offset: stream.lastOffset, rows })
  })
  if (mode === `subset`) {
    try {
      await shape.requestSnapshot(args.subset)
      print({ event: `requested`, handle: stream.shapeHandle, offset: stream.lastOffset, rows: shape.currentRows })
      if (args.fetch) {
        const { metadata, data } = await stream.fetchSnapshot(args.fetch)
        print({ event: `fetched`, handle: stream.shapeHandle, offset: stream.lastOffset, metadata, data })
      }
    } catch (e) {
      fail(e)
    }
  }
} else {
  stream.subscribe(
    (messages) => {
      const upToDate = messages.some((m) => m.headers?.control === `up-to-date`)
      print({ event: `messages`, handle: stream.shapeHandle, offset: stream.lastOffset, messages, upToDate })
      if (args.once && upToDate) process.exit(0)
    },
    (e) => fail(e)
  )
}
process.on(`SIGTERM`, () => process.exit(0))
