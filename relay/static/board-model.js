// The reservation model of the board, in step with accord's engine/model.py and engine/calendar.py.
// Pure functions over plain objects (a reservation's fields as Y.Map.toJSON() gives them): no DOM,
// no Yjs, no clock reads (callers pass `now`), so node can run them against the Python engine's answers.
//
// A reservation is stored as facts, never as a status: the request (resource, start, end, patient, ...),
// lifecycle marks set once (cancelled_at, checked_in_at, ...; a mark counts when its key is present),
// and the home relay's signed verdicts, kept apart in the root map `verdicts` and summarised per
// reservation as a DecisionState by board-decisions.js. deriveStatus() turns facts into the visible
// status exactly as derive_status() does in Python. The board writes requests and marks only: never a
// verdict, a home record or a retired decision key.

import { comparePy, fieldStr } from './board-canonical.js'
import { UNDECIDED } from './board-decisions.js'

export { Decisions, UNDECIDED } from './board-decisions.js'
export { Unverifiable } from './board-authority.js'

export const Status = Object.freeze({
  PENDING: 'pending',
  BOOKED: 'booked',
  REJECTED: 'rejected',
  CANCELLED: 'cancelled',
  CHECKED_IN: 'checked-in',
  FULFILLED: 'fulfilled',
  NOSHOW: 'noshow',
  ENTERED_IN_ERROR: 'entered-in-error'
})

export const Action = Object.freeze({
  RESCHEDULE: 'reschedule',
  CANCEL: 'cancel',
  CHECK_IN: 'check in',
  FULFILL: 'fulfil',
  NOSHOW: 'mark no-show',
  ENTERED_IN_ERROR: 'mark entered-in-error'
})

const ALL_STATUSES = Object.values(Status)

// engine/model.py ALLOWED_FROM, for the actions the board offers (all but edit).
export const ALLOWED_FROM = Object.freeze({
  [Action.RESCHEDULE]: [Status.PENDING, Status.BOOKED, Status.REJECTED],
  [Action.CANCEL]: [Status.PENDING, Status.BOOKED, Status.REJECTED],
  [Action.CHECK_IN]: [Status.BOOKED],
  [Action.FULFILL]: [Status.BOOKED, Status.CHECKED_IN],
  [Action.NOSHOW]: [Status.BOOKED],
  [Action.ENTERED_IN_ERROR]: ALL_STATUSES.filter(s => s !== Status.ENTERED_IN_ERROR)
})

// engine/model.py WHY_REFUSED
export const WHY_REFUSED = Object.freeze({
  [Status.PENDING]: 'the home relay has not booked it yet; wait for the decision',
  [Status.REJECTED]: 'the home relay rejected it; reschedule it to a free slot first',
  [Status.CANCELLED]: 'it is cancelled; book a new reservation instead',
  [Status.CHECKED_IN]: 'the patient is already checked in',
  [Status.FULFILLED]: 'the appointment already took place',
  [Status.NOSHOW]: 'it is marked as a no-show',
  [Status.ENTERED_IN_ERROR]: 'it was entered in error and is closed',
  [Status.BOOKED]: 'it is booked'
})

// Lifecycle marks in precedence order: the first one present decides the status.
export const LIFECYCLE_MARKS = Object.freeze([
  ['entered_in_error_at', Status.ENTERED_IN_ERROR],
  ['cancelled_at', Status.CANCELLED],
  ['noshow_at', Status.NOSHOW],
  ['fulfilled_at', Status.FULFILLED],
  ['checked_in_at', Status.CHECKED_IN]
])

// Keys of the retired decision format (engine/model.py DECISION_KEYS): relays refuse updates that write them.
export const DECISION_KEYS = Object.freeze([
  'decision', 'decided_start', 'decided_end', 'decided_resource', 'booked_start', 'booked_end',
  'booked_resource', 'reason', 'conflict_with', 'decided_by', 'decided_at', 'decided_request'
])

export const MAX_LENGTHS = Object.freeze({ patient: 256, service: 128, note: 2000, reason: 500, actor: 64, name: 128 })
const RESOURCE_ID = /^[A-Za-z0-9._-]{1,64}$/
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})$/
const MAX_SPAN_MS = 31 * 24 * 3600 * 1000

/** A user can act on this error: the message says what happened and what to do. */
export class Refused extends Error {
  constructor (message) {
    super(message)
    this.name = 'Refused'
  }
}

const hasOwn = (object, key) => Object.prototype.hasOwnProperty.call(object, key)

/**
 * The visible status from the stored facts and the home's decisions (model.derive_status).
 * Lifecycle marks win over decisions and count when their key is present; a slot the home released
 * stays released even if the mark were lost; without a home relay every live request counts as booked.
 */
export function deriveStatus (fields, hasHome, decided = UNDECIDED) {
  for (const [key, status] of LIFECYCLE_MARKS) {
    if (hasOwn(fields, key)) return status
  }
  if (decided.released) return Status.CANCELLED
  if (!hasHome || decided.booked !== null) return Status.BOOKED
  if (decided.current === 'rejected') return Status.REJECTED
  return Status.PENDING
}

// ---- times ------------------------------------------------------------------------------------

/** Milliseconds since the epoch for an RFC 3339 string with an offset; null if it is not one. */
export function parseTime (text) {
  if (typeof text !== 'string') return null
  const m = RFC3339.exec(text.trim())
  if (!m) return null
  const ms = Date.parse(text.trim().replace(' ', 'T'))
  return Number.isNaN(ms) ? null : Math.floor(ms / 1000) * 1000
}

/** The stored form: UTC, whole seconds, Z suffix (model.format_time). */
export function formatTime (ms) {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
}

/** Raise unless end is after start and the span is at most 31 days (model.check_interval). */
export function checkInterval (startMs, endMs) {
  if (startMs === null || endMs === null || Number.isNaN(startMs) || Number.isNaN(endMs)) {
    throw new Refused('start and end need a date and a time')
  }
  if (endMs <= startMs) {
    throw new Refused(`end ${formatTime(endMs)} is not after start ${formatTime(startMs)}; a reservation needs a positive duration`)
  }
  if (endMs - startMs > MAX_SPAN_MS) {
    throw new Refused('a reservation may span at most 31 days; split longer stays')
  }
}

// ---- validation -------------------------------------------------------------------------------

export function checkResourceId (resource) {
  if (typeof resource !== 'string' || !RESOURCE_ID.test(resource)) {
    throw new Refused(`resource id ${JSON.stringify(resource)} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -`)
  }
  return resource
}

/** A resource must be declared when the calendar declares any (root map `resources` non-empty). */
export function checkKnownResource (resource, resourceIds) {
  checkResourceId(resource)
  if (resourceIds.length && !resourceIds.includes(resource)) {
    throw new Refused(`resource ${resource} is not declared in this calendar; choose one of ${[...resourceIds].sort().join(', ')}`)
  }
  return resource
}

export function checkText (field, value, required = false) {
  if (typeof value !== 'string') throw new Refused(`${field} must be text`)
  if (required && !value.trim()) throw new Refused(`${field} is required`)
  const limit = MAX_LENGTHS[field]
  if (value.length > limit) throw new Refused(`${field} is ${value.length} characters long; the limit is ${limit}`)
  return value
}

/** Raise Refused unless `action` is allowed from the reservation's current status. */
export function checkTransition (id, action, status) {
  if (!ALLOWED_FROM[action].includes(status)) {
    throw new Refused(`cannot ${action} reservation ${id} (${status}): ${WHY_REFUSED[status]}`)
  }
}

export function allowedActions (status) {
  return Object.keys(ALLOWED_FROM).filter(action => ALLOWED_FROM[action].includes(status))
}

// ---- ids --------------------------------------------------------------------------------------

/** A UUIDv7 (RFC 9562): 48-bit unix milliseconds, version 7, variant 10, random rest. */
export function newReservationId (nowMs, randomBytes) {
  const bytes = new Uint8Array(16)
  bytes.set(randomBytes.subarray(0, 10), 6)
  let ms = Math.floor(nowMs)
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256
    ms = Math.floor(ms / 256)
  }
  bytes[6] = 0x70 | (bytes[6] & 0x0f)
  bytes[8] = 0x80 | (bytes[8] & 0x3f)
  const hex = [...bytes].map(b => b.toString(16).padStart(2, '0')).join('')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

// ---- reading ----------------------------------------------------------------------------------

/**
 * The view of one stored reservation (model.reservation_from_fields) given what the home decided,
 * or null for an entry that cannot be read yet (partly synced or hand-written: skipped, as
 * Calendar.list does).
 */
export function reservationView (id, fields, hasHome, decided = UNDECIDED) {
  const start = parseTime(fields.start)
  const end = parseTime(fields.end)
  if (start === null || end === null) return null
  for (const key of ['created_at', 'updated_at']) if (hasOwn(fields, key) && parseTime(fields[key]) === null) return null
  const status = deriveStatus(fields, hasHome, decided)
  let booked = null
  if (decided.booked !== null && hasHome) {
    const [resource, bookedStart, bookedEnd] = decided.booked
    const bs = parseTime(bookedStart)
    const be = parseTime(bookedEnd)
    if (bs === null || be === null) return null
    booked = { resource, start: bs, end: be }
  }
  const resource = fieldStr(fields, 'resource')
  let proposal = null
  if (hasHome && booked !== null && status === Status.BOOKED) {
    if (resource !== booked.resource || start !== booked.start || end !== booked.end) {
      proposal = decided.current === 'rejected' ? 'rejected' : 'pending'
    }
  }
  let reason = decided.reason
  if (status === Status.CANCELLED || status === Status.ENTERED_IN_ERROR) reason = fieldStr(fields, 'cancel_reason') || reason
  const showReason = [Status.REJECTED, Status.CANCELLED, Status.ENTERED_IN_ERROR].includes(status) || proposal !== null
  const requested = { resource, start, end }
  return {
    id: hasOwn(fields, 'id') ? fieldStr(fields, 'id') || id : id,
    resource,
    start,
    end,
    patient: fieldStr(fields, 'patient'),
    service: fieldStr(fields, 'service'),
    note: fieldStr(fields, 'note'),
    status,
    reason: showReason ? reason : '',
    conflictWith: status === Status.REJECTED || proposal !== null ? decided.conflictWith : '',
    booked,
    proposal,
    requested,
    slot: booked || requested,
    createdBy: fieldStr(fields, 'created_by'),
    updatedBy: fieldStr(fields, 'updated_by'),
    updatedAt: parseTime(fields.updated_at ?? ''),
    decidedBy: decided.decidedBy
  }
}

/**
 * Reservations whose shown slot overlaps [fromMs, toMs), sorted by start, resource, id (Calendar.list).
 * `decisions` is a Decisions.read() answer ({ hasHome, states }).
 */
export function listReservations (all, decisions, fromMs, toMs) {
  const out = []
  for (const [id, fields] of Object.entries(all)) {
    if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) continue
    const item = reservationView(id, fields, decisions.hasHome, decisions.states.get(id))
    if (item === null) continue
    if (!(item.slot.start < toMs && fromMs < item.slot.end)) continue
    out.push(item)
  }
  out.sort((a, b) => a.slot.start - b.slot.start || comparePy(a.slot.resource, b.slot.resource) || comparePy(a.id, b.id))
  return out
}

// ---- writing: which keys each action writes (engine/calendar.py) ---------------------------------

/**
 * The fields of a new reservation (Calendar.book). Raises Refused on invalid input.
 * `request` = { resource, start, end (ms), patient, service, note }.
 */
export function planBook ({ calendar, request, actor, nowMs, randomBytes, resourceIds }) {
  checkKnownResource(request.resource, resourceIds)
  checkInterval(request.start, request.end)
  checkText('patient', request.patient, true)
  checkText('service', request.service ?? '')
  checkText('note', request.note ?? '')
  checkText('actor', actor, true)
  const stamp = formatTime(nowMs)
  const id = newReservationId(nowMs, randomBytes)
  return {
    id,
    calendar,
    resource: request.resource,
    start: formatTime(request.start),
    end: formatTime(request.end),
    patient: request.patient,
    service: request.service ?? '',
    note: request.note ?? '',
    requested_at: stamp,
    created_by: actor,
    created_at: stamp,
    updated_by: actor,
    updated_at: stamp
  }
}

/**
 * The keys to write for an action on an existing reservation (Calendar._update): the action's
 * changes plus updated_by/updated_at, leaving out keys that already hold the value. `decided` is
 * the reservation's DecisionState (what the home decided, as far as this page has verified).
 * Raises Refused when the input is invalid or the status does not allow the action.
 */
export function planUpdate ({ id, fields, hasHome, decided = UNDECIDED, action, changes, actor, nowMs }) {
  checkText('actor', actor, true)
  const status = deriveStatus(fields, hasHome, decided)
  checkTransition(id, action, status)
  const all = { ...changes, updated_by: actor, updated_at: formatTime(nowMs) }
  if (action === Action.RESCHEDULE) all.requested_at = all.updated_at  // a new request, even for the same slot
  const out = {}
  for (const [key, value] of Object.entries(all)) {
    if (DECISION_KEYS.includes(key)) throw new Error(`bug: the board may not write decision key ${key}`)
    if (fields[key] !== value) out[key] = value
  }
  return out
}

export function rescheduleChanges ({ start, end, resource, resourceIds }) {
  checkInterval(start, end)
  const changes = { start: formatTime(start), end: formatTime(end) }
  if (resource !== undefined && resource !== null && resource !== '') changes.resource = checkKnownResource(resource, resourceIds)
  return changes
}

export function cancelChanges ({ reason, nowMs }) {
  checkText('reason', reason ?? '')
  return { cancelled_at: formatTime(nowMs), cancel_reason: reason ?? '' }
}

export function checkInChanges ({ nowMs }) {
  return { checked_in_at: formatTime(nowMs) }
}

export function fulfilChanges ({ nowMs }) {
  return { fulfilled_at: formatTime(nowMs) }
}

export function noShowChanges ({ nowMs }) {
  return { noshow_at: formatTime(nowMs) }
}

/** Calendar.mark_entered_in_error: a reservation that should never have existed. */
export function enteredInErrorChanges ({ reason, nowMs }) {
  checkText('reason', reason ?? '')
  return { entered_in_error_at: formatTime(nowMs), cancel_reason: reason ?? '' }
}

export { ALL_STATUSES }
