#!/usr/bin/env node
// A stock Yjs client (Y.Doc + y-websocket's WebsocketProvider over the `ws` package) for accord's
// interop tests. Nothing here knows about accord: it is what any Yjs web app would run.
//
//   node yclient.mjs edit --url ws://127.0.0.1:PORT --calendar clinic-1 [--token T]
//                         --reservation ID --note TEXT [--timeout 20]
//       connect, wait until synced, wait until reservation ID is in doc.getMap('reservations'),
//       set `note` (+ updated_by/updated_at) on its nested Y.Map, then wait until the edit is
//       flushed: a second, fresh stock client on the same calendar receives it from the relay.
//   node yclient.mjs attack --url ... --calendar ... [--token T] --reservation ID --how HOW
//       what a hostile (or buggy) writer with an ordinary write token can do through the plain Yjs
//       API, once reservation ID is in the document: HOW is uncancel (delete its cancelled_at),
//       blank-mark (set cancelled_at to ""), delete (delete the reservation), replace (a fresh
//       Y.Map under its id), capacity (set resources.room-1.capacity to 1000), bignote (a 5 MiB note),
//       text-note (a Y.Text as the note). Then wait for the
//       relay to close the connection (an "error" event with its close code) or for a fresh client
//       to receive the change ("flushed": the relay accepted it).
//   node yclient.mjs awareness --url ... --calendar ... [--token T] --name ME --expect OTHER
//       connect, publish awareness {user: ME, saw}, re-published every 200 ms so the join order
//       does not matter; set saw=true once a state {user: OTHER} arrives from another client, and
//       finish once OTHER's state says saw=true too (both sides have seen each other).
//   node yclient.mjs pull --url ... --calendar ... [--token T]
//       connect, wait until synced (y-websocket: the first SYNC_STEP2), then report what arrived and
//       the websocket messages that carried it: {"event": "pulled", "reservations": N, "messages": M,
//       "largest": BYTES of the largest message}.
//
// Output: JSON lines on stdout, one per step ({"event": "synced" | "seen" | "edited" | "flushed" |
// "awareness" | "awareness-done" | "error" | "timeout", ...}). Exit code 0 when done, 1 on error (e.g. the relay closed
// the connection with a 4xxx code), 2 on timeout, 64 on bad usage.
//
// Packages come from $ACCORD_NODE_MODULES (an absolute node_modules folder, as installed by
// `make node`); ES modules ignore NODE_PATH, so their ESM entry points are resolved by hand below.
// Without ACCORD_NODE_MODULES the script falls back to the node_modules next to it.
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const NODE_MODULES = process.env.ACCORD_NODE_MODULES || join(dirname(fileURLToPath(import.meta.url)), 'node_modules')

// The ESM entry of a package's main export: exports["."] (import > module > default), else module, else main.
// y-websocket imports `yjs` by name and resolves it to the same file, so there is one Yjs instance.
function esmEntry (pkg) {
  const root = join(NODE_MODULES, pkg)
  const meta = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  let target = null
  const exp = meta.exports
  const dot = exp && (typeof exp === 'string' ? exp : exp['.'] || (exp.import || exp.default ? exp : null))
  if (typeof dot === 'string') target = dot
  else if (dot) target = [dot.import, dot.module, dot.default].find(x => typeof x === 'string') || null
  target = target || meta.module || meta.main || 'index.js'
  return pathToFileURL(join(root, target)).href
}

const EXIT_ERROR = 1
const EXIT_TIMEOUT = 2
const EXIT_USAGE = 64

const emit = obj => process.stdout.write(JSON.stringify(obj) + '\n')

function parseArgs (argv) {
  const opts = { mode: argv[0], url: '', calendar: '', token: '', reservation: '', note: '', name: '', expect: '', how: '', timeout: 20 }
  for (let i = 1; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '')
    if (!argv[i].startsWith('--') || !(key in opts) || key === 'mode' || i + 1 >= argv.length) {
      emit({ event: 'error', error: `bad argument ${argv[i]}; see the header of yclient.mjs for usage` })
      process.exit(EXIT_USAGE)
    }
    opts[key] = key === 'timeout' ? Number(argv[++i]) : argv[++i]
  }
  const need = {
    edit: ['url', 'calendar', 'reservation', 'note'],
    attack: ['url', 'calendar', 'reservation', 'how'],
    awareness: ['url', 'calendar', 'name', 'expect'],
    pull: ['url', 'calendar']
  }[opts.mode]
  const missing = need ? need.filter(k => !opts[k]) : ['mode (edit, attack, awareness or pull)']
  if (missing.length) {
    emit({ event: 'error', error: `missing ${missing.map(k => '--' + k).join(', ')}` })
    process.exit(EXIT_USAGE)
  }
  return opts
}

const opts = parseArgs(process.argv.slice(2))
const [Y, { WebsocketProvider }, wsModule] = await Promise.all(
  ['yjs', 'y-websocket', 'ws'].map(pkg => import(esmEntry(pkg)))
)
const WebSocket = wsModule.default || wsModule.WebSocket

let stage = 'connecting'
// Every message any of our sockets receives, counted before y-websocket handles it.
const received = { messages: 0, largest: 0 }
class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.addEventListener('message', event => {
      received.messages++
      received.largest = Math.max(received.largest, event.data.byteLength)
    })
  }
}
const providers = []

function finish (code, extra) {
  if (extra) emit(extra)
  for (const p of providers) {
    try { p.destroy() } catch (_) {}
  }
  // let the close frames go out; never hang here
  setTimeout(() => process.exit(code), 50).unref()
  setTimeout(() => process.exit(code), 500)
}

const deadline = setTimeout(() => finish(EXIT_TIMEOUT, { event: 'timeout', stage, timeout_s: opts.timeout }), opts.timeout * 1000)
deadline.unref()

// One stock client: a fresh Y.Doc and a WebsocketProvider on ws://HOST:PORT/<calendar>?token=...
function connect (label) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(opts.url, opts.calendar, doc, {
    WebSocketPolyfill: CountingWebSocket,
    params: opts.token ? { token: opts.token } : {},
    disableBc: true,
    maxBackoffTime: 500
  })
  providers.push(provider)
  provider.on('connection-close', event => {
    const code = event && event.code
    // 4xxx: the relay refused us (unauthorized, forbidden, not found); retrying will not help.
    if (code >= 4000) finish(EXIT_ERROR, { event: 'error', client: label, stage, close_code: code, reason: String(event.reason || '') })
  })
  const synced = new Promise(resolve => {
    if (provider.synced) resolve()
    else provider.on('sync', isSynced => { if (isSynced) resolve() })
  })
  return { doc, provider, synced, reservations: doc.getMap('reservations') }
}

// Resolves with the value of predicate() once it is truthy, checking after every document change.
function when (doc, predicate) {
  return new Promise(resolve => {
    const check = () => {
      const value = predicate()
      if (value) { doc.off('afterTransaction', check); resolve(value) }
    }
    doc.on('afterTransaction', check)
    check()
  })
}

const utcStamp = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z')

async function runEdit () {
  const me = connect('editor')
  await me.synced
  stage = 'waiting for reservation'
  emit({ event: 'synced', calendar: opts.calendar, reservations: me.reservations.size })
  const entry = await when(me.doc, () => {
    const value = me.reservations.get(opts.reservation)
    return value instanceof Y.Map ? value : null
  })
  emit({ event: 'seen', id: opts.reservation, fields: entry.toJSON() })

  stage = 'editing'
  me.doc.transact(() => {
    entry.set('note', opts.note)
    entry.set('updated_by', 'yjs-client')
    entry.set('updated_at', utcStamp())
  })
  emit({ event: 'edited', id: opts.reservation, note: opts.note, fields: entry.toJSON() })

  // Flushed = the relay holds the edit: a fresh client that syncs from the relay receives it.
  stage = 'waiting for the edit to be flushed'
  const check = connect('verifier')
  await check.synced
  await when(check.doc, () => {
    const value = check.reservations.get(opts.reservation)
    return value instanceof Y.Map && value.get('note') === opts.note
  })
  emit({ event: 'flushed', id: opts.reservation, note: opts.note })
  finish(0)
}

const ATTACKS = {
  uncancel: (doc, entry) => entry.delete('cancelled_at'),
  'blank-mark': (doc, entry) => entry.set('cancelled_at', ''),
  delete: (doc, entry, id) => doc.getMap('reservations').delete(id),
  replace: (doc, entry, id) => doc.getMap('reservations').set(id, new Y.Map([['id', id], ['note', 'replaced']])),
  capacity: doc => {
    const resources = doc.getMap('resources')
    if (!(resources.get('room-1') instanceof Y.Map)) resources.set('room-1', new Y.Map())
    resources.get('room-1').set('capacity', 1000)
  },
  bignote: (doc, entry) => entry.set('note', 'x'.repeat(5 * 1024 * 1024)),
  'text-note': (doc, entry) => entry.set('note', new Y.Text('a Y.Text where a string belongs'))
}

async function runAttack () {
  const attack = ATTACKS[opts.how]
  if (!attack) finish(EXIT_USAGE, { event: 'error', error: `--how must be one of ${Object.keys(ATTACKS).join(', ')}` })
  const me = connect('attacker')
  await me.synced
  stage = 'waiting for reservation'
  const entry = await when(me.doc, () => {
    const value = me.reservations.get(opts.reservation)
    return value instanceof Y.Map ? value : null
  })
  stage = 'attacking'
  me.doc.transact(() => attack(me.doc, entry, opts.reservation))
  emit({ event: 'attacked', how: opts.how })
  // Accepted = a fresh client syncing from the relay sees the change; refused = the relay closes us (above).
  stage = 'waiting for the relay'
  const check = connect('verifier')
  await check.synced
  const changed = {
    uncancel: d => { const v = d.getMap('reservations').get(opts.reservation); return v instanceof Y.Map && !v.has('cancelled_at') },
    'blank-mark': d => { const v = d.getMap('reservations').get(opts.reservation); return v instanceof Y.Map && v.get('cancelled_at') === '' },
    delete: d => !d.getMap('reservations').has(opts.reservation),
    replace: d => { const v = d.getMap('reservations').get(opts.reservation); return v instanceof Y.Map && v.get('note') === 'replaced' },
    capacity: d => { const r = d.getMap('resources').get('room-1'); return r instanceof Y.Map && r.get('capacity') === 1000 },
    bignote: d => { const v = d.getMap('reservations').get(opts.reservation); return v instanceof Y.Map && (v.get('note') || '').length > 2000 },
    'text-note': d => { const v = d.getMap('reservations').get(opts.reservation); return v instanceof Y.Map && v.get('note') instanceof Y.Text }
  }[opts.how]
  await when(check.doc, () => changed(check.doc))
  emit({ event: 'flushed', how: opts.how })
  finish(0)
}

async function runAwareness () {
  const me = connect(opts.name)
  const { awareness } = me.provider
  await me.synced
  stage = 'waiting for awareness'
  emit({ event: 'synced', calendar: opts.calendar })
  // Done when each side has seen the other: we publish {saw: true} once we see OTHER, and stop once
  // OTHER's state says it saw us. Messages are ordered, so OTHER gets our {saw: true} before we leave.
  let beat = 0
  let sawOther = false
  const publish = () => awareness.setLocalState({ user: opts.name, saw: sawOther, beat: beat++ })
  publish()
  const republish = setInterval(publish, 200) // whoever joins last still gets a fresh state
  await new Promise(resolve => {
    const check = () => {
      for (const [clientId, state] of awareness.getStates()) {
        if (clientId === me.doc.clientID || !state || state.user !== opts.expect) continue
        if (!sawOther) {
          sawOther = true
          emit({ event: 'awareness', name: opts.name, saw: opts.expect })
          publish()
        }
        if (state.saw) {
          awareness.off('update', check)
          resolve()
        }
        return
      }
    }
    awareness.on('update', check)
    check()
  })
  clearInterval(republish)
  emit({ event: 'awareness-done', name: opts.name })
  finish(0)
}

async function runPull () {
  const me = connect('puller')
  await me.synced
  emit({ event: 'pulled', calendar: opts.calendar, reservations: me.reservations.size, ...received })
  finish(0)
}

try {
  if (opts.mode === 'edit') await runEdit()
  else if (opts.mode === 'pull') await runPull()
  else if (opts.mode === 'attack') await runAttack()
  else await runAwareness()
} catch (err) {
  finish(EXIT_ERROR, { event: 'error', stage, error: String(err && err.stack || err) })
}
