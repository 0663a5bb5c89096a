#!/usr/bin/env node
// Hocuspocus server, quiet, no auth hook (any token is accepted).
// Usage: node hocuspocus_server.js [PORT] [HOST] [--sqlite PATH] [--redis PORT]   (PORT 0 picks a free port)
//   --sqlite PATH: persist with @hocuspocus/extension-sqlite (full document state per document,
//   written after Hocuspocus' store debounce: 2 s by default, at most 10 s).
//   --redis PORT: one instance of a cluster, with @hocuspocus/extension-redis on the Redis server at
//   127.0.0.1:PORT (pub/sub between instances; its defaults: lock 1 s, initial sync wait 1 s).
// Prints one JSON line {"port": N} on stdout once listening.
import { Server } from '@hocuspocus/server'

const args = process.argv.slice(2)
const option = name => {
  const at = args.indexOf(name)
  return at >= 0 ? args.splice(at, 2)[1] : null
}
const sqlitePath = option('--sqlite')
const redisPort = option('--redis')
const port = parseInt(args[0] || '0', 10)
const host = args[1] || '127.0.0.1'

const extensions = []
if (sqlitePath) {
  const { SQLite } = await import('@hocuspocus/extension-sqlite')
  extensions.push(new SQLite({ database: sqlitePath }))
}
if (redisPort) {
  const { Redis } = await import('@hocuspocus/extension-redis')
  extensions.push(new Redis({ host: '127.0.0.1', port: parseInt(redisPort, 10) }))
}
const server = new Server({ port, address: host, quiet: true, stopOnSignals: true, extensions })
await server.listen()
console.log(JSON.stringify({ port: server.httpServer.address().port }))
