// The day grid's layout, as a paper diary has it: time down, one column per resource, each
// reservation a block over its slot, and the free time between them cut into bookable pieces.
// Pure functions over board-model.js views (no DOM, no clock), so node can test them.

import { Status } from './board-model.js'
import { SlotStatus, computeSlots, holdsOn } from './board-hours.js'

export const STEP_MS = 5 * 60 * 1000 // the grid's row: five minutes
export const PIECE_MS = 30 * 60 * 1000 // free time is offered in pieces of at most half an hour
const HOUR_MS = 3600 * 1000
const OPEN_HOUR = 8 // the grid shows at least 08:00-18:00 of the day, more if bookings lie outside
const CLOSE_HOUR = 18

// Statuses that hold (or ask for) their slot: the time is not free. A rejected, cancelled or
// entered-in-error reservation leaves its slot free, so the grid shows it but offers the time.
export const HOLDS_SLOT = Object.freeze([Status.PENDING, Status.BOOKED, Status.CHECKED_IN, Status.FULFILLED, Status.NOSHOW])

/**
 * The grid of one day [fromMs, toMs): `items` are listReservations() views, `resourceIds` the
 * calendar's declared resources, `info` per resource id `{ open, capacity }`: `open` the UTC
 * intervals of the day it is open (board-hours.js openIntervals), or null when it declares no
 * hours (open around the clock); a resource missing from `info` is open with capacity 1.
 * Returns { start, end, columns, blocks, free, closed }:
 * - start/end: the hours shown (whole hours, inside the day): at least 08:00-18:00, widened to
 *   the declared opening hours and to what is booked;
 * - columns: [{ resource, lanes, first }] in order (first = the column's first grid lane, 0-based);
 * - blocks: [{ item, resource, lane, start, end, holds }] (start/end clipped to the shown hours);
 * - free: [{ resource, lane, start, end }] pieces of the time engine/slots.py calls free (open,
 *   and booked plus pending holders below the capacity), at most PIECE_MS long, cut at half
 *   hours, so a long afternoon offers 14:00-14:30, 14:30-15:00, ...; in lane 0, or in a lane of
 *   their own when a capacity above one lets them overlap reservations;
 * - closed: [{ resource, start, end }] the shown time outside the resource's opening hours.
 */
export function dayLayout (items, resourceIds, fromMs, toMs, info = {}) {
  const resources = [...new Set([...resourceIds, ...items.map(item => item.slot.resource)])].sort()
  let start = fromMs + OPEN_HOUR * HOUR_MS
  let end = fromMs + CLOSE_HOUR * HOUR_MS
  const spans = items.map(item => [item.slot.start, item.slot.end])
  for (const resource of resources) spans.push(...(info[resource]?.open ?? []))
  for (const [from, to] of spans) {
    start = Math.min(start, floorTo(Math.max(from, fromMs), HOUR_MS, fromMs))
    end = Math.max(end, ceilTo(Math.min(to, toMs), HOUR_MS, fromMs))
  }
  start = Math.max(start, fromMs)
  end = Math.min(end, toMs)

  const columns = []
  const blocks = []
  const free = []
  const closed = []
  let first = 0
  for (const resource of resources) {
    const mine = items.filter(item => item.slot.resource === resource)
    const placed = lanes(mine.map(item => ({
      item, resource, start: Math.max(item.slot.start, start), end: Math.min(item.slot.end, end), holds: HOLDS_SLOT.includes(item.status)
    })))
    let count = Math.max(1, ...placed.map(block => block.lane + 1))
    const open = clip(info[resource]?.open ?? [[start, end]], start, end)
    const capacity = info[resource]?.capacity ?? 1
    const slots = computeSlots(resource, open, holdsOn(items, resource), capacity)
    const pieces = slots.filter(s => s.status === SlotStatus.FREE).flatMap(s => cut(resource, s.start, s.end, start))
    const crowded = pieces.some(p => placed.some(b => b.lane === 0 && b.start < p.end && p.start < b.end))
    const lane = crowded ? count++ : 0
    columns.push({ resource, lanes: count, first })
    first += count
    blocks.push(...placed)
    free.push(...pieces.map(p => ({ ...p, lane })))
    closed.push(...gaps(open, start, end).map(([from, to]) => ({ resource, start: from, end: to })))
  }
  return { start, end, columns, blocks, free, closed }
}

const clip = (intervals, lo, hi) => intervals.map(([a, b]) => [Math.max(a, lo), Math.min(b, hi)]).filter(([a, b]) => a < b)

function gaps (open, lo, hi) {
  const out = []
  let cursor = lo
  for (const [a, b] of open) {
    if (a > cursor) out.push([cursor, a])
    cursor = Math.max(cursor, b)
  }
  if (cursor < hi) out.push([cursor, hi])
  return out
}

/** Free time [from, to) in pieces of at most PIECE_MS, cut at the half hours after `origin`. */
function cut (resource, from, to, origin) {
  const pieces = []
  for (let at = from; at < to;) {
    const next = Math.min(to, floorTo(at, PIECE_MS, origin) + PIECE_MS)
    pieces.push({ resource, start: at, end: next })
    at = next
  }
  return pieces
}

/**
 * Give overlapping blocks side-by-side lanes (the first free lane, in start order). Lane 0 is for
 * reservations that hold their slot and for the free pieces, which never overlap those; a
 * reservation that leaves its slot free (rejected, cancelled) goes to lane 1 or later.
 */
function lanes (blocks) {
  blocks.sort((a, b) => a.start - b.start || b.end - a.end)
  const laneEnds = []
  for (const block of blocks) {
    let lane = block.holds ? 0 : 1
    while (lane < laneEnds.length && laneEnds[lane] !== undefined && laneEnds[lane] > block.start) lane++
    laneEnds[lane] = block.end
    block.lane = lane
  }
  return blocks
}

function floorTo (ms, step, origin) { return origin + Math.floor((ms - origin) / step) * step }
function ceilTo (ms, step, origin) { return origin + Math.ceil((ms - origin) / step) * step }

/** The grid row (1-based, after the header row) where `ms` falls. */
export function rowOf (ms, start) { return 2 + Math.floor((ms - start) / STEP_MS) }

/** The grid row line just after `ms` (a block ending at 09:32 covers the 09:30 row). */
export function rowEnd (ms, start) { return 2 + Math.ceil((ms - start) / STEP_MS) }
