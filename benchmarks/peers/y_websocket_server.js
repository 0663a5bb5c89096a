#!/usr/bin/env node
// The official y-websocket server (setupWSConnection from @y/websocket-server, where the server moved
// after y-websocket v2) on a `ws` server. In memory, one document per URL path.
// Usage: node y_websocket_server.js [PORT] [HOST]   (PORT 0 picks a free port)
// Prints one JSON line {"port": N} on stdout once listening.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const port = parseInt(process.argv[2] || '0', 10)
const host = process.argv[3] || '127.0.0.1'

const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)

const server = http.createServer((_req, res) => { res.writeHead(200); res.end('okay') })
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, ws => wss.emit('connection', ws, req))
})
server.listen(port, host, () => console.log(JSON.stringify({ port: server.address().port })))
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => process.exit(0))
