// The live front-desk board: one calendar's day as a grid (time down, one column per resource,
// free time, inside opening hours and under capacity, bookable by a click) and as a list, with forms to book, reschedule, cancel, check in,
// mark fulfilled, no-show or entered in error. The page is a stock Yjs client of the relay
// (y-websocket on ws://HOST:PORT/<calendar>, token as ?token=) and keeps its copy of the calendar
// in IndexedDB (y-indexeddb), so edits made offline are kept in the browser and reach the relay
// when it is back. What each action writes, and how a status is derived, lives in board-model.js
// (in step with engine/model.py); which decisions are genuine (the home relay's signed verdicts)
// in board-decisions.js; the grid's layout in board-grid.js. Signatures are checked
// asynchronously: a render shows what is verified so far and the board renders again when the
// checks finish, so no row shows booked before its verdict verifies.
//
// What the banner says about the last action is what is true at that moment, in this order:
// "saved on this device" (written to the page's document and IndexedDB); "stored on <relay>"
// (the relay's /status answer says its store holds this page's Yjs client up to the write's
// clock: y-websocket gets no acknowledgement, and the relay never echoes a client's own update,
// so the sync traffic cannot tell); then, for a booking or a new time, "booked by the home" or
// "rejected (...)" once a verified verdict decides that very request. The link badge says
// whether the relay reaches the calendar's home (the same /status answer).
import { IndexeddbPersistence, WebsocketProvider, Y } from './yjs-bundle.min.js'
import * as model from './board-model.js'
import * as grid from './board-grid.js'
import * as hours from './board-hours.js'

const CLOSE = { UNAUTHORIZED: 4401, FORBIDDEN: 4403 } // accord.engine.errors.CloseCode
const TOKEN_KEY = 'accord.token'
const ACTOR_KEY = 'accord.actor'
const SYMBOLS = {
  pending: '◷', booked: '✓', rejected: '✗', cancelled: '⊘', 'checked-in': '➜', fulfilled: '★', noshow: '∅', 'entered-in-error': '⌫'
}
const A = model.Action
const ACTION_LABELS = {
  [A.CHECK_IN]: 'Check in', [A.RESCHEDULE]: 'Reschedule', [A.CANCEL]: 'Cancel', [A.FULFILL]: 'Fulfilled',
  [A.NOSHOW]: 'No-show', [A.ENTERED_IN_ERROR]: 'Entered in error'
}
const PRIMARY = [A.CHECK_IN, A.RESCHEDULE, A.CANCEL] // the rest sit under "More"
const DONE = { // the banner's first words for each action
  [A.CHECK_IN]: 'Checked in', [A.CANCEL]: 'Cancelled', [A.FULFILL]: 'Marked fulfilled', [A.NOSHOW]: 'Marked no-show',
  [A.ENTERED_IN_ERROR]: 'Marked entered in error'
}
const REASONS = { conflict: '', expired: 'the request expired before the home decided', invalid: 'the home found the request invalid' }
const UNDO_MS = 2 * 60 * 1000 // a booking made here can be undone (cancelled) for two minutes
const UNDO_REASON = 'undone at the desk: booked by mistake'
const POLL_FAST_MS = 1000 // while something is not settled (a write not stored or decided, the home away)
const POLL_SLOW_MS = 2000 // otherwise: the badge follows the home within about two seconds
const GOOD_LINKS = ['no-home', 'home', 'linked', 'via-peers']

const $ = id => document.getElementById(id)
const calendar = decodeURIComponent(location.pathname.replace(/^\/board\//, ''))
const state = {
  doc: null, provider: null, decisions: null, canWrite: false, link: 'connecting', socket: 'connecting', refused: false,
  target: null, closing: A.CANCEL, renderQueued: false, checking: false, token: '', relay: null, poll: null, tracked: null
}

// ---- small helpers --------------------------------------------------------------------------------

const pad = n => String(n).padStart(2, '0')
// Times are shown and read in one zone: the calendar's (meta.time_zone, which the CLI uses too), else
// this browser's. Intl does the zone arithmetic (formatToParts), so the board and the CLI agree.
const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'
let zone = BROWSER_ZONE
let zoneFormat = null
function setZone (name) {
  let wanted = BROWSER_ZONE
  if (typeof name === 'string' && name) {
    try { new Intl.DateTimeFormat('en-CA', { timeZone: name }); wanted = name } catch (_) { /* unknown here: the browser's */ }
  }
  if (wanted === zone && zoneFormat) return false
  zone = wanted
  zoneFormat = new Intl.DateTimeFormat('en-CA', {
    timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'
  })
  return true
}
setZone(null)
const parts = ms => {
  const found = {}
  for (const { type, value } of zoneFormat.formatToParts(new Date(ms))) found[type] = value
  return found
}
const dateValue = ms => { const p = parts(ms); return `${p.year}-${p.month}-${p.day}` }
const timeValue = ms => { const p = parts(ms); return `${p.hour}:${p.minute}` }
const minutesOf = ms => Number(parts(ms).minute)
const offsetAt = ms => { // the zone's offset from UTC at ms, in ms
  const p = parts(ms)
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute) - Math.floor(ms / 60000) * 60000
}
const localMs = (date, time) => {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(date) || !/^\d{2}:\d{2}/.test(time)) return NaN
  const [y, m, d] = date.split('-').map(Number)
  const [hh, mm] = time.split(':').map(Number)
  const wall = Date.UTC(y, m - 1, d, hh, mm)
  const first = wall - offsetAt(wall)
  return wall - offsetAt(first) // again at the guess: right across a DST change
}
const dayStart = date => localMs(date, '00:00')
const shiftDay = (date, days) => {
  const [y, m, d] = date.split('-').map(Number)
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10)
}
const span = (start, end) => (dateValue(start) === dateValue(end) ? `${timeValue(start)}–${timeValue(end)}`
  : `${dateValue(start)} ${timeValue(start)} – ${dateValue(end)} ${timeValue(end)}`)
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value)
    else if (key in node) node[key] = value
    else node.setAttribute(key, value)
  }
  node.append(...children.filter(c => c !== null && c !== undefined))
  return node
}
const randomBytes = () => crypto.getRandomValues(new Uint8Array(10))
/** A moment as a receptionist reads it: local time, with the date when it is not today. */
const when = ms => (dateValue(ms) === dateValue(Date.now()) ? timeValue(ms) : `${dateValue(ms)} ${timeValue(ms)}`)
const STORED_TIME = /\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?Z\b/g
/** Messages from the model name stored UTC times; the desk reads local ones. */
const localTimes = text => text.replace(STORED_TIME, found => {
  const ms = Date.parse(found)
  return dateValue(ms) === $('day').value ? timeValue(ms) : when(ms)
})
const relayName = id => (!id ? 'the relay' : /relay/i.test(id) ? id : `relay ${id}`)

function say (kind, text) {
  const box = $('message')
  box.dataset.kind = kind
  const shown = localTimes(text)
  if ($('message-text').textContent !== shown) $('message-text').textContent = shown // unchanged: not announced again
}

function setLink (link, text) {
  state.link = link
  const box = $('link')
  box.dataset.state = link
  box.querySelector('.link-mark').textContent = { connecting: '◌', synced: '●', waiting: '◔', offline: '○', refused: '⨯' }[link]
  $('link-text').textContent = text
}

/** The badge, from the websocket's state and the relay's word on the way to the home. */
function showLink () {
  if (state.refused) return
  if (state.socket === 'offline') {
    return setLink('offline', state.canWrite ? 'Offline: changes are kept in this browser and sent when the relay is back'
      : 'Offline: showing the last copy; live again when the relay is back')
  }
  if (state.socket !== 'synced') return setLink('connecting', state.socket === 'connected' ? 'Connected; syncing…' : 'Connecting to the relay…')
  const st = state.relay
  const here = relayName(st?.relay)
  const home = relayName(st?.home)
  if (!st || GOOD_LINKS.includes(st.link)) {
    const how = !st ? '' : st.link === 'home' ? `; ${here} is the home relay and decides bookings`
      : st.link === 'linked' ? `; the home relay (${home}) is linked`
        : st.link === 'via-peers' ? `; the home relay (${home}) is reached only through other relays` : ''
    return setLink('synced', `Connected to ${here}: changes appear live${how}`)
  }
  const since = st.since ? ` since ${when(Date.parse(st.since))}` : ''
  const why = st.link === 'not-deciding' ? `${here} is named the home but was not started with --home for this calendar`
    : `${home} unreachable${since}`
  setLink('waiting', `Connected to ${here}; decisions waiting for the home (${why})`)
}

// ---- the relay's status: the way to the home, and what its store holds --------------------------

async function fetchStatus (client) {
  const query = `token=${encodeURIComponent(state.token)}` + (client === undefined ? '' : `&client=${client}`)
  const reply = await fetch(`/status/${encodeURI(calendar)}?${query}`, { cache: 'no-store' })
  return { status: reply.status, ...(await reply.json().catch(() => ({}))) }
}

async function pollStatus () {
  clearTimeout(state.poll)
  try {
    const answer = await fetchStatus(state.doc.clientID)
    if (answer.status === 200) state.relay = answer
  } catch (_) {} // offline: the websocket's state says so
  showLink()
  showBanner()
  state.poll = setTimeout(pollStatus, settled() ? POLL_SLOW_MS : POLL_FAST_MS)
}

function settled () {
  const stage = state.tracked ? stageOf(state.tracked) : null
  return state.socket === 'synced' && GOOD_LINKS.includes(state.relay?.link) && (!stage || stage.final)
}

/** The clock of this page's Yjs client now: everything it wrote is below it. */
const ownClock = () => Y.decodeStateVector(Y.encodeStateVector(state.doc)).get(state.doc.clientID) ?? 0

// ---- token and access ------------------------------------------------------------------------------

function takeToken () {
  const url = new URL(location.href)
  const fromUrl = url.searchParams.get('token')
  if (fromUrl !== null) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl)
    url.searchParams.delete('token') // keep it out of history, bookmarks and screenshots
    history.replaceState(null, '', url.pathname + url.search + url.hash)
  }
  return sessionStorage.getItem(TOKEN_KEY) || ''
}

async function access (token) {
  const reply = await fetch(`/access/${encodeURI(calendar)}?token=${encodeURIComponent(token)}`, { cache: 'no-store' })
  const body = await reply.json().catch(() => ({}))
  return { status: reply.status, ...body }
}

function showLogin (problem) {
  $('main').hidden = true
  $('login').hidden = false
  $('login-problem').textContent = problem
  setLink('refused', 'Not connected: sign in first')
  $('login-token').focus()
}

async function start () {
  $('calendar-name').textContent = calendar
  document.title = `${calendar} · front desk · accord`
  $('tz-name').textContent = zone
  const token = takeToken()
  let granted
  try {
    granted = await access(token)
  } catch (_) {
    setLink('offline', 'Offline: the relay cannot be reached; reload this page when it is back')
    return
  }
  if (granted.status === 401) return showLogin(token ? 'That token is not known to this relay; check it and sign in again.' : '')
  if (granted.status === 403) return showLogin(`This token may not open calendar ${calendar}; sign in with another token.`)
  if (granted.status !== 200) return showLogin(granted.message || `The relay answered ${granted.status}.`)
  state.token = token
  if (state.doc) return
  const found = await fetchStatus().catch(() => ({ status: 0 }))
  if (found.status === 404 && found.error === 'no_calendar') return showMissing(token, granted)
  open(token, granted)
}

/** A name this relay holds nothing for: say so rather than open an empty board (a typo, most often). */
function showMissing (token, granted) {
  $('login').hidden = true
  $('missing').hidden = false
  $('missing-text').textContent = `There is no calendar named “${calendar}” on this relay.`
  $('missing-create').hidden = !granted.can_write
  setLink('refused', `Not open: no calendar named ${calendar} here`)
  $('create-calendar').onclick = () => { $('missing').hidden = true; open(token, granted) }
}

// ---- the document and the link --------------------------------------------------------------------

function open (token, granted) {
  state.canWrite = Boolean(granted.can_write)
  document.body.dataset.role = granted.role
  for (const node of document.querySelectorAll('.writer-only')) node.hidden = !state.canWrite
  $('access').textContent = state.canWrite ? '' : 'Read-only access: you can watch this board but not change it.'
  $('login').hidden = true
  $('main').hidden = false

  const doc = new Y.Doc()
  state.doc = doc
  const persistence = new IndexeddbPersistence(`accord:${calendar}`, doc)
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
  const provider = new WebsocketProvider(`${scheme}://${location.host}`, calendar, doc, {
    params: token ? { token } : {},
    disableBc: true, // same-origin tabs sync through the relay, never around it
    maxBackoffTime: 2000
  })
  state.provider = provider
  state.decisions = new model.Decisions(calendar)
  window.accordBoard = { Y, doc, provider, persistence, calendar, model, decisions: state.decisions }

  provider.on('status', ({ status }) => {
    if (status === 'connected') state.socket = 'connected'
    else if (status === 'disconnected' || state.socket === 'offline') state.socket = 'offline'
    else if (state.socket !== 'synced') state.socket = 'connecting'
    showLink()
    showBanner()
  })
  provider.on('sync', synced => {
    if (!synced) return
    state.socket = 'synced'
    showLink()
    pollStatus()
  })
  provider.on('closed', ({ code, reason }) => { // a 44xx close: y-websocket stops reconnecting
    state.refused = true
    const why = code === CLOSE.UNAUTHORIZED ? 'the token is missing or wrong; sign in again'
      : code === CLOSE.FORBIDDEN ? (reason || 'this token may not do that') : (reason || 'closed by the relay')
    setLink('refused', `Refused by the relay (${code}): ${why}. Reload to reconnect.`)
  })

  for (const name of ['reservations', 'resources', 'homes', 'verdicts', 'meta']) doc.getMap(name).observeDeep(queueRender)
  persistence.on('synced', queueRender)
  wireControls()
  render()
  pollStatus()
}

function queueRender () {
  if (state.renderQueued) return
  state.renderQueued = true
  queueMicrotask(() => { state.renderQueued = false; render() })
}

/** The document as plain objects, and what the home decided as far as this page has verified. */
function snapshot () {
  const doc = state.doc
  const all = doc.getMap('reservations').toJSON()
  const decided = state.decisions.read({ reservations: all, homes: doc.getMap('homes').toJSON(), verdicts: doc.getMap('verdicts').toJSON() })
  if (!decided.settled && !state.checking) { // render again once the signatures are checked
    state.checking = true
    state.decisions.idle().then(() => { state.checking = false; queueRender() })
  }
  return { all, resources: doc.getMap('resources').toJSON(), decided }
}

// ---- rendering --------------------------------------------------------------------------------------

// The calendar's zone (meta.time_zone, set with `accord terminal time-zone`) when it has one.
function showZone () {
  setZone(state.doc?.getMap('meta').get('time_zone'))
  $('tz-name').textContent = zone === BROWSER_ZONE ? zone : `${zone} (the calendar's zone; this browser is in ${BROWSER_ZONE})`
}

function render () {
  if (!state.doc) return
  showZone()
  const day = $('day').value
  const { all, resources, decided } = snapshot()
  const from = dayStart(day)
  const to = dayStart(shiftDay(day, 1))
  const items = model.listReservations(all, decided, from, to)
  const focus = document.activeElement?.dataset?.id ? { ...document.activeElement.dataset } : null

  const label = new Date(from).toLocaleDateString(undefined, { timeZone: zone, weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' })
  $('day-caption').textContent = `Reservations on ${label}: ${items.length}` + (decided.settled ? '' : ' (checking the home relay\'s signatures…)')
  $('day-table').dataset.verified = decided.settled ? 'all' : 'checking'
  $('trust').textContent = decided.uncheckable
    ? 'No decision can be shown: this browser cannot check the home relay\'s signatures (it needs an https:// or localhost address and a current browser), so every request shows as pending.'
    : ''
  renderGrid(items, resources, from, to)
  $('rows').replaceChildren(...items.map(item => row(item, all, resources, decided)))
  $('empty').hidden = items.length > 0
  $('resource-list').replaceChildren(...Object.keys(resources).sort().map(id => el('option', { value: id }, resources[id]?.name || id)))
  if (focus) document.querySelector(`#rows button[data-id="${CSS.escape(focus.id)}"][data-action="${CSS.escape(focus.action)}"]`)?.focus()
  showBanner()
}

function resourceName (id, resources) {
  const name = resources[id]?.name
  return name && name !== id ? `${name} (${id})` : id
}

function badge (status) {
  return el('span', { className: 'badge', dataset: { status } }, el('span', { ariaHidden: 'true' }, SYMBOLS[status] || '•'), ` ${status}`)
}

/** A free piece the grid's half-hour lines do not already tell: it gets its times written out. */
const odd = piece => piece.end - piece.start < grid.PIECE_MS || minutesOf(piece.start) % 30 !== 0

/** The day grid: time down, a column per resource, each reservation a block, free time as buttons. */
function renderGrid (items, resources, from, to) {
  // Opening hours are wall-clock times in the calendar's zone (UTC without one), whatever zone the board shows.
  const hoursZone = state.doc.getMap('meta').get('time_zone')
  const info = {}
  for (const [id, entry] of Object.entries(resources)) {
    const declared = entry !== null && typeof entry === 'object' && entry.hours !== undefined && entry.hours !== null
    info[id] = { open: declared ? hours.openIntervals(hours.openingHours(entry), hoursZone, from, to) : null, capacity: hours.capacityOf(entry) }
  }
  const layout = grid.dayLayout(items, Object.keys(resources), from, to, info)
  const box = $('grid')
  if (!layout.columns.length) {
    box.replaceChildren(el('p', { className: 'empty' }, 'No resources on this calendar yet: book by typing a resource id below.'))
    return
  }
  const lanes = layout.columns.reduce((n, c) => n + c.lanes, 0)
  const rows = (layout.end - layout.start) / grid.STEP_MS
  box.style.gridTemplateColumns = `4rem repeat(${lanes}, minmax(3.5rem, 1fr))`
  box.style.gridTemplateRows = `auto repeat(${rows}, var(--grid-step))`
  const place = (node, row, rowEnd, column, span = 1) => {
    node.style.gridRow = `${row} / ${rowEnd}`
    node.style.gridColumn = `${column} / span ${span}`
    return node
  }
  const cells = []
  const half = 30 * 60 * 1000
  for (let at = layout.start; at < layout.end; at += half) {
    const row = grid.rowOf(at, layout.start)
    const hour = minutesOf(at) === 0
    cells.push(place(el('div', { className: hour ? 'grid-line hour' : 'grid-line', ariaHidden: 'true' }), row, row + 6, 1, lanes + 1))
    cells.push(place(el('div', { className: 'grid-time' }, timeValue(at)), row, row + 6, 1))
  }
  for (const column of layout.columns) {
    cells.push(place(el('div', { className: 'grid-head', role: 'heading', ariaLevel: '3' }, resourceName(column.resource, resources)),
      1, 2, 2 + column.first, column.lanes))
  }
  const firstLane = new Map(layout.columns.map(c => [c.resource, c.first]))
  const laneCount = new Map(layout.columns.map(c => [c.resource, c.lanes]))
  for (const shut of layout.closed) {
    cells.push(place(el('div', { className: 'closed', title: `${shut.resource} closed ${span(shut.start, shut.end)}` }, 'closed'),
      grid.rowOf(shut.start, layout.start), grid.rowEnd(shut.end, layout.start), 2 + firstLane.get(shut.resource), laneCount.get(shut.resource)))
  }
  if (state.canWrite) {
    for (const piece of layout.free) {
      const text = span(piece.start, piece.end)
      const button = el('button', {
        type: 'button', className: 'free', ariaLabel: `Book ${piece.resource} ${text} (free)`,
        dataset: { resource: piece.resource, start: String(piece.start), end: String(piece.end) }
      }, el('span', { ariaHidden: 'true' }, '+ '), 'free', odd(piece) ? ` ${text}` : '')
      cells.push(place(button, grid.rowOf(piece.start, layout.start), grid.rowEnd(piece.end, layout.start), 2 + firstLane.get(piece.resource) + piece.lane))
    }
  }
  for (const block of layout.blocks) {
    const { item } = block
    const node = el('div', { className: 'booking', dataset: { id: item.id, status: item.status }, title: `${item.patient} ${span(item.slot.start, item.slot.end)}` },
      el('div', {}, badge(item.status), ' ', el('span', { className: 'booking-time' }, span(item.slot.start, item.slot.end))),
      el('div', {}, el('span', { className: 'booking-who' }, item.patient), item.service ? el('span', { className: 'booking-what' }, ` ${item.service}`) : null))
    cells.push(place(node, grid.rowOf(block.start, layout.start), Math.max(grid.rowEnd(block.end, layout.start), grid.rowOf(block.start, layout.start) + 1),
      2 + firstLane.get(block.resource) + block.lane))
  }
  box.replaceChildren(...cells)
}

function row (item, all, resources, decided) {
  const { slot } = item
  const when = el('th', { scope: 'row' }, el('time', { dateTime: model.formatTime(slot.start) }, span(slot.start, slot.end)))
  if (item.proposal) {
    when.append(el('div', { className: 'proposal' }, `asked: ${span(item.start, item.end)}` +
      (item.resource !== slot.resource ? ` on ${item.resource}` : '') + ` (${item.proposal})`))
  }
  const status = el('td', {}, badge(item.status))
  const why = explain(item, all, decided)
  if (why) status.append(el('div', { className: 'why' }, why))
  const changed = el('td', {}, item.updatedBy || '—')
  if (item.updatedAt !== null) changed.append(el('div', { className: 'when' }, `${dateValue(item.updatedAt)} ${timeValue(item.updatedAt)}`))
  const cells = [
    when,
    el('td', {}, resourceName(slot.resource, resources)),
    el('td', {}, item.patient),
    el('td', {}, item.service),
    status,
    el('td', { className: 'note' }, item.note),
    changed
  ]
  if (state.canWrite) {
    const button = action => el('button', {
      type: 'button', dataset: { id: item.id, action }, ariaLabel: `${ACTION_LABELS[action]} ${item.patient} at ${timeValue(slot.start)}`
    }, ACTION_LABELS[action])
    const allowed = model.allowedActions(item.status)
    const more = allowed.filter(action => !PRIMARY.includes(action))
    cells.push(el('td', { className: 'row-actions' }, ...allowed.filter(action => PRIMARY.includes(action)).map(button),
      more.length ? el('details', { className: 'more' }, el('summary', {}, 'More'), ...more.map(button)) : null))
  }
  return el('tr', { dataset: { id: item.id, status: item.status } }, ...cells)
}

/** "conflicts with P-1 09:00–09:30 on room-1", or '' when the home named no conflict. */
function conflict (item, all, decided) {
  if (!item.conflictWith) return ''
  const id = item.conflictWith
  const other = Object.hasOwn(all, id) && all[id] && typeof all[id] === 'object'
    ? model.reservationView(id, all[id], decided.hasHome, decided.states.get(id)) : null
  return other ? `conflicts with ${other.patient} ${span(other.slot.start, other.slot.end)} on ${other.slot.resource}`
    : `conflicts with reservation ${id}`
}

function explain (item, all, decided) {
  const reason = item.reason in REASONS ? REASONS[item.reason] : item.reason
  return [conflict(item, all, decided), reason].filter(Boolean).join('; ')
}

// ---- the banner: what is true about the last action ---------------------------------------------------

/**
 * Track an action this page just wrote: the banner follows it from "saved on this device" to
 * "stored on <relay>" and, for a request the home decides, to its verdict.
 */
function track (id, title, { decides = false, undoable = false } = {}) {
  state.tracked = { id, title, decides, undoable, clock: ownClock(), atMs: Date.now() }
  showBanner()
  clearTimeout(state.poll)
  state.poll = setTimeout(pollStatus, 150) // the store commits within milliseconds
}

/** Where the tracked action stands: { kind, text, final }. */
function stageOf (tracked) {
  const { all, decided } = snapshot()
  const fields = all[tracked.id]
  const item = fields && typeof fields === 'object' ? model.reservationView(tracked.id, fields, decided.hasHome, decided.states.get(tracked.id)) : null
  const st = state.relay
  const stored = st !== null && typeof st.stored === 'number' && st.stored >= tracked.clock
  const here = relayName(st?.relay)
  const saved = state.socket === 'offline' ? 'saved on this device; it is sent when the relay is back'
    : 'saved on this device; not on the relay yet'
  if (tracked.decides && item !== null && decided.hasHome) {
    const verdict = decided.states.get(tracked.id) ?? model.UNDECIDED
    if (verdict.current === 'rejected') {
      const why = [conflict(item, all, decided), REASONS[item.reason] ?? item.reason].filter(Boolean).join('; ')
      return { kind: 'rejected', text: `rejected by the home relay${why ? ` (${why})` : ''}`, final: true }
    }
    if (verdict.current === 'booked') return { kind: 'booked', text: `booked by the home (${relayName(verdict.decidedBy)})`, final: true }
    if (!stored) return { kind: 'local', text: saved, final: false }
    const away = st && !GOOD_LINKS.includes(st.link) && st.since ? `; the home is unreachable since ${when(Date.parse(st.since))}` : ''
    return { kind: 'stored', text: `stored on ${here}; waiting for the home (${relayName(st?.home)}) to decide${away}`, final: false }
  }
  const noHome = tracked.decides && !decided.hasHome ? ' (no home relay decides this calendar: it counts as booked)' : ''
  if (!stored) return { kind: 'local', text: saved + noHome, final: false }
  return { kind: 'stored', text: `stored on ${here}${noHome}`, final: true }
}

function showBanner () {
  const tracked = state.tracked
  if (!tracked || !state.doc) return
  const stage = stageOf(tracked)
  say(stage.kind, `${tracked.title}: ${stage.text}.`)
  const fields = state.doc.getMap('reservations').get(tracked.id)?.toJSON()
  const { decided } = snapshot()
  const status = fields ? model.deriveStatus(fields, decided.hasHome, decided.states.get(tracked.id)) : null
  $('undo').hidden = !(tracked.undoable && Date.now() - tracked.atMs < UNDO_MS && model.ALLOWED_FROM[A.CANCEL].includes(status))
}

// ---- actions ------------------------------------------------------------------------------------------

function actor () {
  const name = $('actor').value.trim() || 'board'
  localStorage.setItem(ACTOR_KEY, name)
  return name
}

function resourceIds () { return Object.keys(state.doc.getMap('resources').toJSON()) }

function book () {
  const fields = model.planBook({
    calendar,
    actor: actor(),
    nowMs: Date.now(),
    randomBytes: randomBytes(),
    resourceIds: resourceIds(),
    request: {
      resource: $('book-resource').value.trim(),
      start: localMs($('book-date').value, $('book-start').value),
      end: localMs($('book-date').value, $('book-end').value),
      patient: $('book-patient').value.trim(),
      service: $('book-service').value.trim(),
      note: $('book-note').value
    }
  })
  state.doc.transact(() => state.doc.getMap('reservations').set(fields.id, new Y.Map(Object.entries(fields))), 'board')
  return fields
}

/** Write the keys an action changes, after checking the transition against the latest facts. */
function update (id, action, changes) {
  const entry = state.doc.getMap('reservations').get(id)
  if (!(entry instanceof Y.Map)) throw new model.Refused(`reservation ${id} is not on this board any more; reload the day`)
  const { decided } = snapshot()
  let keys
  try {
    keys = model.planUpdate({
      id, fields: entry.toJSON(), hasHome: decided.hasHome, decided: decided.states.get(id), action, changes, actor: actor(), nowMs: Date.now()
    })
  } catch (error) {
    if (error instanceof model.Refused && !decided.settled) {
      throw new model.Refused(`${error.message} (the home relay's decisions are still being checked; try again in a moment)`)
    }
    throw error
  }
  state.doc.transact(() => { for (const [key, value] of Object.entries(keys)) entry.set(key, value) }, 'board')
  return entry.toJSON()
}

/** Run `work` (which writes and tracks); show a refusal in `problemBox` or the banner. */
function attempt (problemBox, work) {
  try {
    work()
    if (problemBox) problemBox.textContent = ''
    return true
  } catch (error) {
    if (!(error instanceof model.Refused)) throw error
    const text = localTimes(`Not saved: ${error.message}.`)
    state.tracked = null
    $('undo').hidden = true
    if (problemBox) problemBox.textContent = text
    else { say('error', text); $('message').focus() }
    return false
  }
}

const who = f => `${f.patient}, ${span(Date.parse(f.start), Date.parse(f.end))} on ${f.resource}`

/** A lifecycle mark (check-in, cancel, fulfilled, no-show, entered in error): counts at once, final. */
function mark (id, action, changes) {
  const f = update(id, action, changes)
  track(id, `${DONE[action]} ${who(f)}`)
}

function openDialog (kind, id) {
  const fields = state.doc.getMap('reservations').get(id)?.toJSON()
  if (!fields) return
  const { decided } = snapshot()
  const item = model.reservationView(id, fields, decided.hasHome, decided.states.get(id))
  if (!item) return
  state.target = id
  const who = `${item.patient}, ${span(item.slot.start, item.slot.end)} on ${item.slot.resource}`
  if (kind === A.RESCHEDULE) {
    $('reschedule-who').textContent = who
    $('reschedule-problem').textContent = ''
    $('reschedule-resource').value = item.resource
    $('reschedule-date').value = dateValue(item.start)
    $('reschedule-start').value = timeValue(item.start)
    $('reschedule-end').value = timeValue(item.end)
    $('reschedule-dialog').showModal()
  } else { // cancel or entered in error: one dialog, with a reason
    state.closing = kind
    const error = kind === A.ENTERED_IN_ERROR
    $('cancel-title').textContent = error ? 'Mark entered in error' : 'Cancel reservation'
    $('cancel-help').textContent = error ? 'For a reservation that should never have existed (a duplicate, the wrong patient). It is closed for good.'
      : 'The slot is freed. A cancellation cannot be taken back: book again if needed.'
    $('cancel-submit').textContent = error ? 'Mark entered in error' : 'Cancel reservation'
    $('cancel-who').textContent = who
    $('cancel-problem').textContent = ''
    $('cancel-reason').value = ''
    $('cancel-dialog').showModal()
  }
}

/** Fill the booking form from a free piece of the grid. */
function prefill (button) {
  const start = Number(button.dataset.start)
  $('book-resource').value = button.dataset.resource
  $('book-date').value = dateValue(start)
  $('book-start').value = timeValue(start)
  $('book-end').value = timeValue(Number(button.dataset.end))
  $('book').scrollIntoView({ block: 'nearest' })
  $('book-patient').focus()
}

function wireControls () {
  const params = new URLSearchParams(location.search)
  const day = /^\d{4}-\d{2}-\d{2}$/.test(params.get('day') || '') ? params.get('day') : dateValue(Date.now())
  const setDay = value => {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) return
    $('day').value = value
    $('book-date').value = value
    const url = new URL(location.href)
    url.searchParams.set('day', value)
    history.replaceState(null, '', url.pathname + url.search)
    render()
  }
  $('day').value = day
  $('book-date').value = day
  $('day').addEventListener('change', () => setDay($('day').value))
  $('prev-day').addEventListener('click', () => setDay(shiftDay($('day').value, -1)))
  $('next-day').addEventListener('click', () => setDay(shiftDay($('day').value, 1)))
  $('today').addEventListener('click', () => setDay(dateValue(Date.now())))
  $('actor').value = localStorage.getItem(ACTOR_KEY) || 'board'

  $('book-form').addEventListener('submit', event => {
    event.preventDefault()
    const ok = attempt(null, () => {
      const f = book()
      // Never "Booked" here: the home has not decided yet. The banner follows the decision.
      track(f.id, `Request for ${f.patient} on ${f.resource} at ${timeValue(Date.parse(f.start))}`, { decides: true, undoable: true })
    })
    if (ok) for (const id of ['book-patient', 'book-service', 'book-note']) $(id).value = ''
  })
  $('undo').addEventListener('click', () => {
    const tracked = state.tracked
    if (!tracked) return
    attempt(null, () => {
      const f = update(tracked.id, A.CANCEL, model.cancelChanges({ reason: UNDO_REASON, nowMs: Date.now() }))
      track(tracked.id, `Undone (cancelled) the request for ${who(f)}`)
    })
  })
  $('grid').addEventListener('click', event => {
    const button = event.target.closest('button.free')
    if (button) prefill(button)
  })
  $('rows').addEventListener('click', event => {
    const button = event.target.closest('button[data-action]')
    if (!button) return
    const { id, action } = button.dataset
    const nowMs = Date.now()
    if (action === A.CHECK_IN) attempt(null, () => mark(id, action, model.checkInChanges({ nowMs })))
    else if (action === A.FULFILL) attempt(null, () => mark(id, action, model.fulfilChanges({ nowMs })))
    else if (action === A.NOSHOW) attempt(null, () => mark(id, action, model.noShowChanges({ nowMs })))
    else openDialog(action, id)
  })
  $('reschedule-form').addEventListener('submit', event => {
    event.preventDefault()
    const ok = attempt($('reschedule-problem'), () => {
      const date = $('reschedule-date').value
      const changes = model.rescheduleChanges({
        start: localMs(date, $('reschedule-start').value),
        end: localMs(date, $('reschedule-end').value),
        resource: $('reschedule-resource').value.trim(),
        resourceIds: resourceIds()
      })
      const f = update(state.target, A.RESCHEDULE, changes)
      track(state.target, `New time for ${who(f)}`, { decides: true })
    })
    if (ok) $('reschedule-dialog').close()
  })
  $('cancel-form').addEventListener('submit', event => {
    event.preventDefault()
    const ok = attempt($('cancel-problem'), () => {
      const reason = $('cancel-reason').value.trim()
      const nowMs = Date.now()
      const changes = state.closing === A.ENTERED_IN_ERROR ? model.enteredInErrorChanges({ reason, nowMs }) : model.cancelChanges({ reason, nowMs })
      mark(state.target, state.closing, changes)
    })
    if (ok) $('cancel-dialog').close()
  })
  $('reschedule-close').addEventListener('click', () => $('reschedule-dialog').close())
  $('cancel-close').addEventListener('click', () => $('cancel-dialog').close())
}

$('login-form').addEventListener('submit', event => {
  event.preventDefault()
  sessionStorage.setItem(TOKEN_KEY, $('login-token').value.trim())
  $('login-token').value = ''
  start()
})
start()
