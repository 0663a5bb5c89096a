// The live front-desk board: one calendar's day as a table, with forms to book, reschedule, cancel
// and check in. The page is a stock Yjs client of the relay (y-websocket on ws://HOST:PORT/<calendar>,
// token as ?token=) and keeps its copy of the calendar in IndexedDB (y-indexeddb), so edits made
// offline are kept in the browser and reach the relay when it is back. What each action writes,
// and how a status is derived, lives in board-model.js (in step with engine/model.py); which
// decisions are genuine (the home relay's signed verdicts) in board-decisions.js. Signatures are
// checked asynchronously: a render shows what is verified so far and the board renders again when
// the checks finish, so no row shows booked before its verdict verifies.
import { IndexeddbPersistence, WebsocketProvider, Y } from './yjs-bundle.min.js'
import * as model from './board-model.js'

const CLOSE = { UNAUTHORIZED: 4401, FORBIDDEN: 4403 } // accord.engine.errors.CloseCode
const TOKEN_KEY = 'accord.token'
const ACTOR_KEY = 'accord.actor'
const SYMBOLS = {
  pending: '◷', booked: '✓', rejected: '✗', cancelled: '⊘', 'checked-in': '➜', fulfilled: '★', noshow: '∅', 'entered-in-error': '⌫'
}
const ACTION_LABELS = { [model.Action.CHECK_IN]: 'Check in', [model.Action.RESCHEDULE]: 'Reschedule', [model.Action.CANCEL]: 'Cancel' }

const $ = id => document.getElementById(id)
const calendar = decodeURIComponent(location.pathname.replace(/^\/board\//, ''))
const state = {
  doc: null, provider: null, decisions: null, canWrite: false, link: 'connecting', refused: false, target: null,
  renderQueued: false, checking: false
}

// ---- small helpers --------------------------------------------------------------------------------

const pad = n => String(n).padStart(2, '0')
const dateValue = ms => { const d = new Date(ms); return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` }
const timeValue = ms => { const d = new Date(ms); return `${pad(d.getHours())}:${pad(d.getMinutes())}` }
const localMs = (date, time) => {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(date) || !/^\d{2}:\d{2}/.test(time)) return NaN
  const [y, m, d] = date.split('-').map(Number)
  const [hh, mm] = time.split(':').map(Number)
  return new Date(y, m - 1, d, hh, mm).getTime()
}
const dayStart = date => localMs(date, '00:00')
const shiftDay = (date, days) => { const d = new Date(dayStart(date)); d.setDate(d.getDate() + days); return dateValue(d.getTime()) }
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

function say (kind, text) {
  const box = $('message')
  box.dataset.kind = kind
  box.textContent = text
}

function setLink (link, text) {
  state.link = link
  const box = $('link')
  box.dataset.state = link
  box.querySelector('.link-mark').textContent = { connecting: '◌', synced: '●', offline: '○', refused: '⨯' }[link]
  $('link-text').textContent = text
}

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
  $('tz-name').textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time'
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
  if (!state.doc) open(token, granted)
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
    if (state.refused) return
    if (status === 'connected') setLink('connecting', 'Connected; syncing…')
    else if (status === 'disconnected' || state.link === 'offline') {
      setLink('offline', state.canWrite ? 'Offline: changes are kept in this browser and sent when the relay is back'
        : 'Offline: showing the last copy; live again when the relay is back')
    } else if (state.link !== 'synced') setLink('connecting', 'Connecting to the relay…')
  })
  provider.on('sync', synced => {
    if (synced && !state.refused) setLink('synced', 'Synced with the relay: changes appear live')
  })
  provider.on('closed', ({ code, reason }) => { // a 44xx close: y-websocket stops reconnecting
    state.refused = true
    const why = code === CLOSE.UNAUTHORIZED ? 'the token is missing or wrong; sign in again'
      : code === CLOSE.FORBIDDEN ? (reason || 'this token may not do that') : (reason || 'closed by the relay')
    setLink('refused', `Refused by the relay (${code}): ${why}. Reload to reconnect.`)
  })

  for (const name of ['reservations', 'resources', 'homes', 'verdicts']) doc.getMap(name).observeDeep(queueRender)
  persistence.on('synced', queueRender)
  wireControls()
  render()
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

function render () {
  if (!state.doc) return
  const day = $('day').value
  const { all, resources, decided } = snapshot()
  const from = dayStart(day)
  const to = dayStart(shiftDay(day, 1))
  const items = model.listReservations(all, decided, from, to)
  const focus = document.activeElement?.dataset?.id ? { ...document.activeElement.dataset } : null

  const label = new Date(from).toLocaleDateString(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' })
  $('day-caption').textContent = `Reservations on ${label}: ${items.length}` + (decided.settled ? '' : ' (checking the home relay\'s signatures…)')
  $('day-table').dataset.verified = decided.settled ? 'all' : 'checking'
  $('trust').textContent = decided.uncheckable
    ? 'No decision can be shown: this browser cannot check the home relay\'s signatures (it needs an https:// or localhost address and a current browser), so every request shows as pending.'
    : ''
  $('rows').replaceChildren(...items.map(item => row(item, all, resources, decided)))
  $('empty').hidden = items.length > 0
  $('resource-list').replaceChildren(...Object.keys(resources).sort().map(id => el('option', { value: id }, resources[id]?.name || id)))
  if (focus) document.querySelector(`#rows button[data-id="${CSS.escape(focus.id)}"][data-action="${CSS.escape(focus.action)}"]`)?.focus()
}

function resourceName (id, resources) {
  const name = resources[id]?.name
  return name && name !== id ? `${name} (${id})` : id
}

function row (item, all, resources, decided) {
  const { slot } = item
  const when = el('th', { scope: 'row' }, el('time', { dateTime: model.formatTime(slot.start) }, span(slot.start, slot.end)))
  if (item.proposal) {
    when.append(el('div', { className: 'proposal' }, `asked: ${span(item.start, item.end)}` +
      (item.resource !== slot.resource ? ` on ${item.resource}` : '') + ` (${item.proposal})`))
  }
  const status = el('td', {}, el('span', { className: 'badge', dataset: { status: item.status } },
    el('span', { ariaHidden: 'true' }, SYMBOLS[item.status] || '•'), ` ${item.status}`))
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
    const buttons = model.allowedActions(item.status).map(action => el('button', {
      type: 'button', dataset: { id: item.id, action }, ariaLabel: `${ACTION_LABELS[action]} ${item.patient} at ${timeValue(slot.start)}`
    }, ACTION_LABELS[action]))
    cells.push(el('td', { className: 'row-actions' }, ...buttons))
  }
  return el('tr', { dataset: { id: item.id, status: item.status } }, ...cells)
}

function explain (item, all, decided) {
  const parts = []
  if (item.conflictWith) {
    const id = item.conflictWith
    const other = Object.hasOwn(all, id) && all[id] && typeof all[id] === 'object'
      ? model.reservationView(id, all[id], decided.hasHome, decided.states.get(id)) : null
    parts.push(other ? `conflicts with ${other.patient} ${span(other.slot.start, other.slot.end)} on ${other.slot.resource}`
      : `conflicts with reservation ${item.conflictWith}`)
  }
  if (item.reason) parts.push(item.reason)
  return parts.join('; ')
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

function attempt (problemBox, work) {
  try {
    const text = work()
    if (problemBox) problemBox.textContent = ''
    say('ok', `${text}${state.link === 'synced' ? '' : ' (kept in this browser; it is sent when the relay is back)'}`)
    return true
  } catch (error) {
    if (!(error instanceof model.Refused)) throw error
    const text = `Not saved: ${error.message}.`
    if (problemBox) problemBox.textContent = text
    else { say('error', text); $('message').focus() }
    return false
  }
}

function openDialog (kind, id) {
  const fields = state.doc.getMap('reservations').get(id)?.toJSON()
  if (!fields) return
  const { decided } = snapshot()
  const item = model.reservationView(id, fields, decided.hasHome, decided.states.get(id))
  if (!item) return
  state.target = id
  const who = `${item.patient}, ${span(item.slot.start, item.slot.end)} on ${item.slot.resource}`
  if (kind === 'reschedule') {
    $('reschedule-who').textContent = who
    $('reschedule-problem').textContent = ''
    $('reschedule-resource').value = item.resource
    $('reschedule-date').value = dateValue(item.start)
    $('reschedule-start').value = timeValue(item.start)
    $('reschedule-end').value = timeValue(item.end)
    $('reschedule-dialog').showModal()
  } else {
    $('cancel-who').textContent = who
    $('cancel-problem').textContent = ''
    $('cancel-reason').value = ''
    $('cancel-dialog').showModal()
  }
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
      const fields = book()
      return `Booked ${fields.patient} on ${fields.resource} at ${timeValue(Date.parse(fields.start))}.`
    })
    if (ok) for (const id of ['book-patient', 'book-service', 'book-note']) $(id).value = ''
  })
  $('rows').addEventListener('click', event => {
    const button = event.target.closest('button[data-action]')
    if (!button) return
    const { id, action } = button.dataset
    if (action === model.Action.CHECK_IN) {
      attempt(null, () => { const f = update(id, action, model.checkInChanges({ nowMs: Date.now() })); return `Checked in ${f.patient}.` })
    } else openDialog(action === model.Action.CANCEL ? 'cancel' : 'reschedule', id)
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
      const f = update(state.target, model.Action.RESCHEDULE, changes)
      return `Rescheduled ${f.patient} to ${span(Date.parse(f.start), Date.parse(f.end))} on ${f.resource}.`
    })
    if (ok) $('reschedule-dialog').close()
  })
  $('cancel-form').addEventListener('submit', event => {
    event.preventDefault()
    const ok = attempt($('cancel-problem'), () => {
      const f = update(state.target, model.Action.CANCEL, model.cancelChanges({ reason: $('cancel-reason').value.trim(), nowMs: Date.now() }))
      return `Cancelled ${f.patient}.`
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
