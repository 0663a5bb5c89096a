#!/usr/bin/env node
// Hocuspocus server, quiet, no auth hook (any token is accepted).
// Usage: node hocuspocus_server.js [PORT] [HOST] [--sqlite PATH]   (PORT 0 picks a free port)
//   --sqlite PATH: persist with @hocuspocus/extension-sqlite (full document state per document,
//   written after Hocuspocus' store debounce: 2 s by default, at most 10 s).
// Prints one JSON line {"port": N} on stdout once listening.
import { Server } from '@hocuspocus/server'

const args = process.argv.slice(2)
const sqliteAt = args.indexOf('--sqlite')
const sqlitePath = sqliteAt >= 0 ? args.splice(sqliteAt, 2)[1] : null
const port = parseInt(args[0] || '0', 10)
const host = args[1] || '127.0.0.1'

const extensions = []
if (sqlitePath) {
  const { SQLite } = await import('@hocuspocus/extension-sqlite')
  extensions.push(new SQLite({ database: sqlitePath }))
}
const server = new Server({ port, address: host, quiet: true, stopOnSignals: true, extensions })
await server.listen()
console.log(JSON.stringify({ port: server.httpServer.address().port }))
