#!/usr/bin/env node
// Load driver for Yjs websocket sync servers (y-websocket protocol or Hocuspocus framing), used by
// benchmarks/relay_vs_peers.py. Adapted from the shared peers harness (driver/load.mjs); the fan-out
// scenario runs as one of several cooperating driver processes so that one single-threaded Node
// process applying every remote update does not cap the measurement.
//
// Fan-out (one worker of several; the orchestrator talks to it over stdin/stdout, one JSON line each):
//   node load.mjs --scenario fanout --url ws://127.0.0.1:PORT --protocol y-websocket|hocuspocus
//                 --doc NAME --clients N --first I --count K --updates M [--rate R] [--edit-ratio 0.2]
//   --url may list several servers of one cluster, comma separated: client i connects to the
//   (i mod n)-th, and the "converged" line adds latencies_cross_ms, the samples whose origin client
//   is on another server than the receiver (benchmarks/cluster_vs_hocuspocus.py).
//   -> {"event":"ready"}          after clients I..I+K-1 connected and synced
//   <- go T0                      start making updates at epoch ms T0 (all workers share the clock)
//   -> {"event":"converged",...}  every local client has seen every other client's last update
//      (or {"event":"timeout",...} after --timeout seconds)
//   <- check                      -> {"event":"state", ...} state vectors and reservation counts
//   <- close                      close the clients and exit 0
//
// Cold sync (one process, one JSON line):
//   node load.mjs --scenario coldsync --url ... --protocol ... --doc NAME --preload K [--batch 100]
//
// Exit code 0 when ok, 1 when the scenario failed, 2 on bad usage.
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import WebSocket from 'ws'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'

// ---------------------------------------------------------------- args
const argv = process.argv.slice(2)
const opts = {
  url: 'ws://127.0.0.1:1234',
  protocol: 'y-websocket',
  doc: 'bench',
  scenario: 'fanout',
  clients: 10, // N: clients in the whole scenario (all workers)
  first: 0, // I: first client index hosted by this worker
  count: -1, // K: clients hosted by this worker (-1: all)
  updates: 100, // M: updates per client
  preload: 10000,
  rate: 0, // total updates/s across all clients and workers; 0 = tight loop
  'edit-ratio': 0.2,
  batch: 100,
  timeout: 60,
  'connect-timeout': 15
}
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const k = a.slice(2)
  if (!a.startsWith('--') || !(k in opts) || i + 1 >= argv.length) { console.error(`bad option ${a}`); process.exit(2) }
  const v = argv[++i]
  opts[k] = typeof opts[k] === 'number' ? Number(v) : v
}
if (!['y-websocket', 'hocuspocus'].includes(opts.protocol)) { console.error('bad --protocol'); process.exit(2) }
if (opts.count < 0) opts.count = opts.clients - opts.first

const now = () => performance.timeOrigin + performance.now() // epoch ms, sub-ms resolution
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const tick = () => new Promise(resolve => setImmediate(resolve))
const emit = obj => process.stdout.write(JSON.stringify(obj) + '\n')

// ---------------------------------------------------------------- protocol constants
const MSG_SYNC = 0
const MSG_AWARENESS = 1
const MSG_AUTH = 2 // y-websocket: auth (permission denied); hocuspocus: auth handshake
const MSG_QUERY_AWARENESS = 3
const HP_SYNC_REPLY = 4
const HP_SYNC_STATUS = 8
const HP_PING = 9
const HP_PONG = 10
const HP_AUTH_TOKEN = 0
const HP_AUTH_DENIED = 1
const HP_AUTH_OK = 2
const REMOTE = Symbol('remote')

// ---------------------------------------------------------------- client
class Client {
  constructor (idx, { url, protocol, doc }) {
    this.idx = idx
    this.protocol = protocol
    this.docName = doc
    this.doc = new Y.Doc()
    this.reservations = this.doc.getMap('reservations')
    this.bytesRx = 0
    this.msgsRx = 0
    this.bytesTx = 0
    this.synced = false
    this.closed = false
    this.error = null
    this.onMessageHook = null
    this._syncWaiters = []
    const urls = url.split(',')
    this.server = idx % urls.length
    const base = urls[this.server]
    const wsUrl = protocol === 'hocuspocus' ? base : `${base.replace(/\/$/, '')}/${encodeURIComponent(doc)}`
    this.ws = new WebSocket(wsUrl, { perMessageDeflate: false })
    this.ws.binaryType = 'nodebuffer'
    this.ws.on('open', () => this._onOpen())
    this.ws.on('message', data => this._onMessage(data))
    this.ws.on('error', err => { this.error = this.error || String(err && err.message || err); this._rejectWaiters() })
    this.ws.on('close', (code, reason) => {
      this.closed = true
      if (!this.closing && !this.error) this.error = `closed by server (code ${code} ${reason})`
      this._rejectWaiters()
    })
    this.doc.on('update', (update, origin) => {
      if (origin === REMOTE) return
      const enc = this._header(MSG_SYNC)
      syncProtocol.writeUpdate(enc, update)
      this._send(enc)
    })
  }

  _header (type) {
    const enc = encoding.createEncoder()
    if (this.protocol === 'hocuspocus') encoding.writeVarString(enc, this.docName)
    encoding.writeVarUint(enc, type)
    return enc
  }

  _send (encOrBuf) {
    if (this.ws.readyState !== WebSocket.OPEN) return
    const buf = encOrBuf instanceof Uint8Array ? encOrBuf : encoding.toUint8Array(encOrBuf)
    this.bytesTx += buf.byteLength
    this.ws.send(buf)
  }

  _sendSyncStep1 () {
    const enc = this._header(MSG_SYNC)
    syncProtocol.writeSyncStep1(enc, this.doc)
    this._send(enc)
  }

  _onOpen () {
    this.tOpen = now()
    if (this.protocol === 'hocuspocus') {
      // Hocuspocus: [doc][2=Auth][0=Token][token][providerVersion] first; sync starts after Authenticated.
      const enc = this._header(MSG_AUTH)
      encoding.writeVarUint(enc, HP_AUTH_TOKEN)
      encoding.writeVarString(enc, 'bench-token')
      encoding.writeVarString(enc, '4.8.0')
      this._send(enc)
    } else {
      this._sendSyncStep1()
    }
  }

  _onMessage (data) {
    const buf = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    this.bytesRx += buf.byteLength
    this.msgsRx++
    this.tIn = now() // before decoding: when the server's answer arrived, not when it was applied
    try {
      if (this.protocol === 'hocuspocus') this._onHocuspocus(buf)
      else this._onYWebsocket(buf)
    } catch (e) {
      this.error = this.error || `decode error: ${e && e.stack || e}`
    }
    if (this.onMessageHook) this.onMessageHook(this)
  }

  _handleSync (decoder) {
    const reply = this._header(MSG_SYNC)
    const emptyLen = encoding.length(reply)
    const t = syncProtocol.readSyncMessage(decoder, reply, this.doc, REMOTE)
    if (encoding.length(reply) > emptyLen) this._send(reply)
    if (t === syncProtocol.messageYjsSyncStep2 && !this.synced) {
      this.synced = true
      this.tSynced = now()
      this.tAnswerIn = this.tIn
      for (const w of this._syncWaiters) w.resolve()
      this._syncWaiters = []
    }
  }

  _onYWebsocket (buf) {
    const decoder = decoding.createDecoder(buf)
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MSG_SYNC: this._handleSync(decoder); break
      case MSG_AWARENESS: break
      case MSG_AUTH: this.error = 'permission denied'; this._rejectWaiters(); break
      case MSG_QUERY_AWARENESS: break
      default: break // e.g. accord's ACK, which stock clients ignore too
    }
  }

  _onHocuspocus (buf) {
    if (buf.length === 1 && buf[0] === HP_PING) { this._send(Uint8Array.of(HP_PONG)); return }
    const decoder = decoding.createDecoder(buf)
    decoding.readVarString(decoder)
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MSG_SYNC:
      case HP_SYNC_REPLY:
        this._handleSync(decoder); break
      case MSG_AUTH: {
        const sub = decoding.readVarUint(decoder)
        if (sub === HP_AUTH_OK) { this._sendSyncStep1() } else if (sub === HP_AUTH_DENIED) {
          this.error = `permission denied: ${decoding.readVarString(decoder)}`; this._rejectWaiters()
        }
        break
      }
      case HP_SYNC_STATUS: break
      default: break
    }
  }

  _rejectWaiters () {
    for (const w of this._syncWaiters) w.reject(new Error(this.error || 'closed'))
    this._syncWaiters = []
  }

  whenSynced (timeoutMs) {
    if (this.synced) return Promise.resolve()
    if (this.error) return Promise.reject(new Error(this.error))
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`client ${this.idx}: sync timeout after ${timeoutMs} ms`)), timeoutMs)
      this._syncWaiters.push({ resolve: () => { clearTimeout(t); resolve() }, reject: e => { clearTimeout(t); reject(e) } })
    })
  }

  // Round trip: the server answers our SyncStep1 only after it processed everything we sent before.
  async barrier (timeoutMs) {
    this.synced = false
    this._sendSyncStep1()
    await this.whenSynced(timeoutMs)
  }

  close () { this.closing = true; try { this.ws.close() } catch (_) {} }
}

// ---------------------------------------------------------------- workload
const CALENDARS = ['cardiology', 'dermatology', 'radiology', 'pediatrics', 'orthopedics']
const STATUSES = ['booked', 'confirmed', 'checked_in', 'cancelled', 'no_show']
const pad = n => String(n).padStart(2, '0')

// One reservation: a nested Y.Map with 11 string fields.
function reservationFields (clientIdx, seq, n) {
  const day = 1 + (n % 28)
  const hour = 8 + (n % 10)
  return {
    id: `r-${clientIdx}-${n}`,
    calendar: CALENDARS[n % CALENDARS.length],
    resource: `room-${(n * 7 + clientIdx) % 40}`,
    start: `2026-12-${pad(day)}T${pad(hour)}:00:00Z`,
    end: `2026-12-${pad(day)}T${pad(hour)}:30:00Z`,
    patient: `patient-${(n * 13 + clientIdx * 101) % 100000}`,
    status: STATUSES[0],
    note: `follow-up visit, bring previous reports (#${n})`,
    updated_by: `client-${clientIdx}`,
    updated_at: now().toFixed(3),
    rev: `${clientIdx}:${seq}`
  }
}

// Insert a new reservation or (with probability editRatio) edit one of this client's own; one transaction.
function doUpdate (c, seq, editRatio, rnd) {
  c.own = c.own || []
  const edit = c.own.length > 0 && rnd() < editRatio
  c.doc.transact(() => {
    if (edit) {
      const key = c.own[Math.floor(rnd() * c.own.length)]
      const m = c.reservations.get(key)
      m.set('status', STATUSES[1 + (seq % (STATUSES.length - 1))])
      m.set('note', `edited by client-${c.idx} at seq ${seq}`)
      m.set('updated_by', `client-${c.idx}`)
      m.set('rev', `${c.idx}:${seq}`)
      m.set('updated_at', now().toFixed(3))
    } else {
      const f = reservationFields(c.idx, seq, c.own.length)
      const m = new Y.Map()
      for (const [k, v] of Object.entries(f)) m.set(k, v)
      c.reservations.set(f.id, m)
      c.own.push(f.id)
    }
  })
}

function mulberry32 (a) {
  return () => { a |= 0; a = a + 0x6D2B79F5 | 0; let t = Math.imul(a ^ a >>> 15, 1 | a); t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t; return ((t ^ t >>> 14) >>> 0) / 4294967296 }
}

const r3 = x => x == null ? null : +x.toFixed(3)

// ---------------------------------------------------------------- fanout worker
const stdinLines = (() => {
  const queue = []; const waiters = []
  const rl = createInterface({ input: process.stdin })
  rl.on('line', line => { const w = waiters.shift(); if (w) w(line.trim()); else queue.push(line.trim()) })
  rl.on('close', () => { for (const w of waiters.splice(0)) w('close') ; queue.push('close') })
  return { next: () => queue.length ? Promise.resolve(queue.shift()) : new Promise(resolve => waiters.push(resolve)), rl }
})()

async function fanoutWorker () {
  const N = opts.clients; const M = opts.updates; const I = opts.first; const K = opts.count
  const clients = []
  try {
    const t0c = now()
    for (let i = I; i < I + K; i++) clients.push(new Client(i, opts))
    await Promise.all(clients.map(c => c.whenSynced(opts['connect-timeout'] * 1000)))
    // convergence: maxSeen[receiver][origin] = highest seq observed (Yjs integrates one client's operations
    // in clock order, so seeing an origin's last seq means all of its updates have arrived)
    const latencies = []
    const servers = opts.url.split(',').length
    const crossLatencies = [] // origin on another server of the cluster (servers > 1 only)
    let remaining = K * (N - 1)
    let tConverged = null
    let resolveConverged
    const converged = new Promise(resolve => { resolveConverged = resolve })
    for (const c of clients) {
      c.maxSeen = new Int32Array(N).fill(-1)
      const note = (rev, ts, tRecv) => {
        if (typeof rev !== 'string') return
        const [o, s] = rev.split(':').map(Number)
        if (o === c.idx) return
        if (ts) {
          const ms = tRecv - parseFloat(ts)
          latencies.push(ms)
          if (o % servers !== c.server) crossLatencies.push(ms)
        }
        if (s > c.maxSeen[o]) {
          const before = c.maxSeen[o]
          c.maxSeen[o] = s
          if (before < M - 1 && s === M - 1 && --remaining === 0) { tConverged = now(); resolveConverged() }
        }
      }
      c.reservations.observeDeep((events, tr) => {
        if (tr.origin !== REMOTE) return
        const tRecv = now()
        for (const ev of events) {
          if (ev.target === c.reservations) {
            for (const [key, ch] of ev.changes.keys) {
              if (ch.action === 'delete') continue
              const m = c.reservations.get(key)
              if (m instanceof Y.Map) note(m.get('rev'), m.get('updated_at'), tRecv)
            }
          } else if (ev.target instanceof Y.Map) {
            note(ev.target.get('rev'), ev.target.get('updated_at'), tRecv)
          }
        }
      })
    }
    emit({ event: 'ready', connect_s: r3((now() - t0c) / 1000) })

    const go = await stdinLines.next()
    if (!go.startsWith('go ')) return finishEarly(clients, `expected "go", got ${go}`)
    const tStart = Number(go.slice(3))
    if (tStart > now()) await sleep(tStart - now())
    const cpuStart = process.cpuUsage()
    const rnd = mulberry32(42 + I)
    const editRatio = opts['edit-ratio']
    let deadlineHit = false
    const deadline = setTimeout(() => { deadlineHit = true; resolveConverged() }, opts.timeout * 1000)
    if (opts.rate > 0) {
      // paced: global update u is due at tStart + u / rate and is made by client u % N
      const intervalMs = 1000 / opts.rate
      for (let u = 0; u < N * M && !deadlineHit; u++) {
        const owner = u % N
        if (owner < I || owner >= I + K) continue
        const wait = tStart + u * intervalMs - now()
        if (wait > 1) await sleep(wait); else if (owner === I) await tick()
        doUpdate(clients[owner - I], Math.floor(u / N), editRatio, rnd)
      }
    } else {
      // tight loop: each round every local client makes one update, then yield to the event loop
      for (let seq = 0; seq < M && !deadlineHit; seq++) {
        for (const c of clients) doUpdate(c, seq, editRatio, rnd)
        await tick()
      }
    }
    const tSent = now()
    if (remaining === 0 && !tConverged) { tConverged = now(); resolveConverged() }
    await converged
    clearTimeout(deadline)
    const cpu = process.cpuUsage(cpuStart)
    const errors = clients.filter(c => c.error).map(c => `client ${c.idx}: ${c.error}`)
    const common = {
      send_s: r3((tSent - tStart) / 1000),
      driver_cpu_ms: Math.round((cpu.user + cpu.system) / 1000),
      bytes_rx: clients.reduce((s, c) => s + c.bytesRx, 0),
      bytes_tx: clients.reduce((s, c) => s + c.bytesTx, 0),
      errors: errors.slice(0, 3)
    }
    if (!tConverged) {
      emit({ event: 'timeout', remaining, pairs: K * (N - 1), ...common })
    } else {
      // latencies rounded to 10 µs keep the line short
      const round = xs => xs.map(x => Math.round(x * 100) / 100)
      const cross = servers > 1 ? { latencies_cross_ms: round(crossLatencies) } : {}
      emit({ event: 'converged', t_converged: tConverged, ...common, latencies_ms: round(latencies), ...cross })
    }
    for (;;) {
      const cmd = await stdinLines.next()
      if (cmd === 'check') {
        await sleep(20)
        emit({
          event: 'state',
          state_vectors: clients.map(c => Buffer.from(Y.encodeStateVector(c.doc)).toString('base64')),
          reservations: clients.map(c => c.reservations.size),
          errors: clients.filter(c => c.error).map(c => `client ${c.idx}: ${c.error}`).slice(0, 3)
        })
      } else if (cmd === 'close') break
    }
    for (const c of clients) c.close()
    return 0
  } catch (e) {
    return finishEarly(clients, String(e && e.message || e))
  }
}

function finishEarly (clients, error) {
  emit({ event: 'error', error })
  for (const c of clients) c.close()
  return 1
}

// ---------------------------------------------------------------- coldsync
async function coldsync () {
  const K = opts.preload
  const B = Math.max(1, opts.batch)
  const base = { scenario: 'coldsync', preload: K, batch: B }
  let writer = null; let fresh = null
  try {
    const deadlineAt = now() + opts.timeout * 1000
    writer = new Client(0, opts)
    await writer.whenSynced(opts['connect-timeout'] * 1000)
    const tPre = now()
    for (let i = 0; i < K; i += B) {
      writer.doc.transact(() => {
        for (let j = i; j < Math.min(K, i + B); j++) {
          const f = reservationFields(0, j, j)
          const m = new Y.Map()
          for (const [k, v] of Object.entries(f)) m.set(k, v)
          writer.reservations.set(f.id, m)
        }
      })
      if (writer.ws.bufferedAmount > 4 << 20) { while (writer.ws.bufferedAmount > 1 << 20) await sleep(1) } else await tick()
    }
    // barrier: the server has processed every preload update once it answers our SyncStep1
    await writer.barrier(Math.max(1000, deadlineAt - now()))
    const preloadS = (now() - tPre) / 1000
    const docBytes = Y.encodeStateAsUpdate(writer.doc).byteLength
    // the writer stays connected: in-memory servers drop a document when its last client leaves
    const t0 = now()
    let tAll = null
    let resolveAll
    const all = new Promise(resolve => { resolveAll = resolve })
    fresh = new Client(1, opts)
    fresh.onMessageHook = c => {
      if (tAll === null && c.reservations.size >= K) { tAll = now(); c.bytesAtAll = c.bytesRx; resolveAll() }
    }
    const to = setTimeout(resolveAll, Math.max(1000, deadlineAt - now()))
    await all
    clearTimeout(to)
    if (tAll === null) {
      return { ...base, ok: false, error: `timeout: fresh client has ${fresh.reservations.size}/${K} reservations${fresh.error ? '; ' + fresh.error : ''}`, preload_s: r3(preloadS) }
    }
    return {
      ...base,
      ok: !writer.error && !fresh.error,
      error: writer.error || fresh.error || undefined,
      preload_s: r3(preloadS),
      preload_ups: Math.round(K / preloadS),
      coldsync_s: r3((tAll - t0) / 1000),
      ws_open_s: r3((fresh.tOpen - t0) / 1000),
      sync_step2_s: fresh.tSynced ? r3((fresh.tSynced - t0) / 1000) : null,
      // the server's part: until its state answer reached the client (the rest is Yjs applying it)
      answer_s: fresh.tAnswerIn ? r3((fresh.tAnswerIn - t0) / 1000) : null,
      bytes: fresh.bytesAtAll,
      messages: fresh.msgsRx,
      doc_update_bytes: docBytes,
      reservations: fresh.reservations.size
    }
  } catch (e) {
    return { ...base, ok: false, error: String(e && e.message || e) }
  } finally {
    if (fresh) fresh.close()
    if (writer) writer.close()
  }
}

// ---------------------------------------------------------------- main
const hardKill = setTimeout(() => {
  emit({ event: 'error', ok: false, error: 'hard timeout' })
  process.exit(1)
}, (opts.timeout + opts['connect-timeout'] + 60) * 1000)
hardKill.unref()

let code
if (opts.scenario === 'coldsync') {
  stdinLines.rl.close()
  const res = await coldsync()
  emit({ protocol: opts.protocol, url: opts.url, doc: opts.doc, ...res })
  code = res.ok ? 0 : 1
} else if (opts.scenario === 'fanout') {
  code = await fanoutWorker()
} else {
  console.error(`unknown scenario ${opts.scenario}`)
  code = 2
}
await sleep(50)
process.exit(code)
