// Opening hours and the free time they leave, computed as engine/slots.py computes them (keep the
// two in step: tests/test_board_model.py runs both over the same cases). Pure functions: no DOM,
// no clock; a zone is an IANA name that Intl knows. Times are epoch milliseconds, UTC.
//
// A resource's `resources` entry may carry `hours` (the weekly schedule, JSON text such as
// {"mon": [["08:00", "12:00"], ["13:00", "17:00"]]}; an unnamed day is closed) and
// `hours_exceptions` (dates that differ: {"2026-12-25": []}). Without `hours` the resource is open
// around the clock. A schedule that does not read counts as closed (nothing is offered as free);
// exceptions that do not read count as none. Wall-clock times are in the calendar's zone
// (meta.time_zone; UTC without one, or for a name this browser does not know).

export const DAYS = Object.freeze(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'])
export const SlotStatus = Object.freeze({ FREE: 'free', BUSY: 'busy', BUSY_TENTATIVE: 'busy-tentative' })
const MAX_INTERVALS_PER_DAY = 8
const MAX_EXCEPTIONS = 400
const DAY_MS = 24 * 3600 * 1000
const HHMM = /^[0-9]{2}:[0-9]{2}$/
const DATE = /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/
// Statuses that hold a slot: booked ones fully, pending ones tentatively (engine/slots.HOLDING).
const HOLDING = Object.freeze(['booked', 'checked-in', 'fulfilled', 'noshow'])
const ALWAYS = Object.freeze([[0, 1440]])

class Unreadable extends Error {}

/** Minutes after midnight of "HH:MM" ("24:00" only as an end). */
function clock (text, end) {
  if (typeof text !== 'string' || !HHMM.test(text)) throw new Unreadable(`opening time ${text} is not HH:MM`)
  if (end && text === '24:00') return 1440
  const hour = Number(text.slice(0, 2))
  const minute = Number(text.slice(3))
  if (hour > 23 || minute > 59) throw new Unreadable(`opening time ${text} is not a time of day`)
  return hour * 60 + minute
}

function intervals (value) {
  if (!Array.isArray(value) || value.length > MAX_INTERVALS_PER_DAY) throw new Unreadable('not a list of intervals')
  const out = []
  for (const pair of value) {
    if (!Array.isArray(pair) || pair.length !== 2) throw new Unreadable('an interval is a pair')
    const start = clock(pair[0], false)
    const stop = clock(pair[1], true)
    if (stop <= start) throw new Unreadable('closes before it opens')
    if (out.length && start < out[out.length - 1][1]) throw new Unreadable('intervals overlap or are out of order')
    out.push([start, stop])
  }
  return out
}

const isObject = v => v !== null && typeof v === 'object' && !Array.isArray(v)

function readJson (text) {
  if (typeof text !== 'string') throw new Unreadable('opening hours are stored as JSON text')
  try { return JSON.parse(text) } catch (_) { throw new Unreadable('not valid JSON') }
}

/** A stored `hours` value as weekday (0 = Monday) -> intervals, or null if it does not read. */
export function readWeekly (text) {
  try {
    const data = readJson(text)
    if (!isObject(data)) return null
    const weekly = new Map()
    for (const [key, value] of Object.entries(data)) {
      const day = DAYS.indexOf(key)
      if (day < 0) return null
      weekly.set(day, intervals(value))
    }
    return weekly
  } catch (e) {
    if (e instanceof Unreadable) return null
    throw e
  }
}

/** A stored `hours_exceptions` value as "YYYY-MM-DD" -> intervals, or null if it does not read. */
export function readExceptions (text) {
  try {
    const data = readJson(text)
    if (!isObject(data) || Object.keys(data).length > MAX_EXCEPTIONS) return null
    const out = new Map()
    for (const [key, value] of Object.entries(data)) {
      if (!DATE.test(key) || !realDate(key)) return null
      out.set(key, intervals(value))
    }
    return out
  } catch (e) {
    if (e instanceof Unreadable) return null
    throw e
  }
}

function realDate (text) {
  const [y, m, d] = text.split('-').map(Number)
  const at = new Date(0)
  at.setUTCFullYear(y, m - 1, d) // not Date.UTC: it reads years 0-99 as 1900-1999
  return y >= 1 && at.getUTCFullYear() === y && at.getUTCMonth() === m - 1 && at.getUTCDate() === d
}

/**
 * A resource's opening hours from its `resources` entry (a plain object, as Y.Map.toJSON() gives):
 * { weekly: Map weekday -> [[openMin, closeMin]], exceptions: Map date -> [...] }.
 */
export function openingHours (entry) {
  const hours = isObject(entry) ? entry.hours : undefined
  const dated = isObject(entry) ? entry.hours_exceptions : undefined
  const weekly = hours === undefined || hours === null
    ? new Map(DAYS.map((_, i) => [i, ALWAYS]))
    : (readWeekly(hours) ?? new Map())
  const exceptions = dated === undefined || dated === null ? new Map() : (readExceptions(dated) ?? new Map())
  return { weekly, exceptions }
}

/** The capacity the decider uses: a whole number 1-1000, else 1 (engine/calendar.read_capacity). */
export function capacityOf (entry) {
  const value = isObject(entry) ? entry.capacity : undefined
  return Number.isInteger(value) && value >= 1 && value <= 1000 ? value : 1
}

// ---- zones ------------------------------------------------------------------------------------

const formats = new Map()
/** The zone opening hours are read in: `name` if Intl knows it, else UTC (engine/slots.zone_of). */
export function zoneOf (name) {
  if (typeof name !== 'string' || !name || name.toUpperCase() === 'UTC') return 'UTC'
  if (!formats.has(name)) {
    try {
      formats.set(name, new Intl.DateTimeFormat('en-CA', {
        timeZone: name, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hourCycle: 'h23'
      }))
    } catch (_) { return 'UTC' }
  }
  return name
}

function wall (zone, ms) { // the wall clock at ms, as if it were UTC, whole minutes
  if (zone === 'UTC') return Math.floor(ms / 60000) * 60000
  const p = {}
  for (const { type, value } of formats.get(zone).formatToParts(new Date(ms))) p[type] = value
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute)
}

const offsetAt = (zone, ms) => wall(zone, ms) - Math.floor(ms / 60000) * 60000

/**
 * The instant of a wall-clock time (`wallMs`: the local time written as if UTC), as Python's
 * datetime(..., tzinfo=ZoneInfo) with fold=0 has it: the earlier of two readings in the hour a
 * clock goes back, and for a time the clock skips, the offset from before the change.
 */
export function instantOf (zone, wallMs) {
  if (zone === 'UTC') return wallMs
  const before = offsetAt(zone, wallMs - DAY_MS / 2)
  const after = offsetAt(zone, wallMs + DAY_MS / 2)
  const readings = [wallMs - before, wallMs - after].filter(t => t + offsetAt(zone, t) === wallMs)
  return readings.length ? Math.min(...readings) : wallMs - before
}

/** The calendar date ("YYYY-MM-DD") in `zone` at ms. */
export function dateIn (zone, ms) { return new Date(wall(zone, ms)).toISOString().slice(0, 10) }

// ---- computation (engine/slots.open_intervals, holds_on, compute_slots) -------------------------

/** The UTC intervals [[start, end]] within [lo, hi) in which the resource is open (merged, sorted). */
export function openIntervals (hours, zoneName, lo, hi) {
  const zone = zoneOf(zoneName)
  const out = []
  let day = Date.parse(dateIn(zone, lo)) - DAY_MS
  const last = Date.parse(dateIn(zone, hi))
  for (; day <= last; day += DAY_MS) {
    const date = new Date(day).toISOString().slice(0, 10)
    const weekday = (new Date(day).getUTCDay() + 6) % 7
    const today = hours.exceptions.has(date) ? hours.exceptions.get(date) : (hours.weekly.get(weekday) ?? [])
    for (const [open, close] of today) {
      const begin = Math.max(instantOf(zone, day + open * 60000), lo)
      const end = Math.min(instantOf(zone, day + close * 60000), hi)
      if (begin >= end) continue
      if (out.length && begin <= out[out.length - 1][1]) out[out.length - 1][1] = Math.max(out[out.length - 1][1], end)
      else out.push([begin, end])
    }
  }
  return out
}

/**
 * What each reservation view (board-model.js reservationView) claims on `resource`: its
 * confirmed slot while it holds one, its requested slot while pending, and a pending
 * reschedule's new slot, tentatively. [{ start, end, tentative }].
 */
export function holdsOn (items, resource) {
  const holds = []
  for (const item of items) {
    if (HOLDING.includes(item.status)) {
      const slot = item.slot
      if (slot.resource === resource) holds.push({ start: slot.start, end: slot.end, tentative: false })
      const asked = item.requested
      if (item.proposal === 'pending' && asked && asked.resource === resource &&
          (asked.resource !== slot.resource || asked.start !== slot.start || asked.end !== slot.end)) {
        holds.push({ start: asked.start, end: asked.end, tentative: true })
      }
    } else if (item.status === 'pending' && (item.requested ?? item.slot).resource === resource) {
      const asked = item.requested ?? item.slot
      holds.push({ start: asked.start, end: asked.end, tentative: true })
    }
  }
  return holds
}

/** Cut the open intervals into free, busy-tentative and busy stretches: [{ start, end, resource, status }]. */
export function computeSlots (resource, open, holds, capacity) {
  const out = []
  for (const [lo, hi] of open) {
    const inside = holds.filter(h => h.start < hi && lo < h.end)
    const cuts = new Set([lo, hi])
    for (const h of inside) for (const t of [h.start, h.end]) if (lo < t && t < hi) cuts.add(t)
    const points = [...cuts].sort((a, b) => a - b)
    for (let i = 0; i + 1 < points.length; i++) {
      const [begin, end] = [points[i], points[i + 1]]
      const over = inside.filter(h => h.start < end && begin < h.end)
      const booked = over.filter(h => !h.tentative).length
      const pending = over.length - booked
      const status = booked >= capacity ? SlotStatus.BUSY
        : booked + pending >= capacity ? SlotStatus.BUSY_TENTATIVE : SlotStatus.FREE
      const prev = out[out.length - 1]
      if (prev && prev.status === status && prev.end === begin) prev.end = end
      else out.push({ start: begin, end, resource, status })
    }
  }
  return out
}
