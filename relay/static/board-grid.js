// The day grid's layout, as a paper diary has it: time down, one column per resource, each
// reservation a block over its slot, and the free time between them cut into bookable pieces.
// Pure functions over board-model.js views (no DOM, no clock), so node can test them.

import { Status } from './board-model.js'

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
 * calendar's declared resources. Returns { start, end, columns, blocks, free }:
 * - start/end: the hours shown (whole hours, inside the day);
 * - columns: [{ resource, lanes, first }] in order (first = the column's first grid lane, 0-based);
 * - blocks: [{ item, resource, lane, start, end, holds }] (start/end clipped to the shown hours);
 * - free: [{ resource, start, end }] free pieces between the slots held, at most PIECE_MS long,
 *   cut at half hours, so a long afternoon offers 14:00-14:30, 14:30-15:00, ...
 */
export function dayLayout (items, resourceIds, fromMs, toMs) {
  const resources = [...new Set([...resourceIds, ...items.map(item => item.slot.resource)])].sort()
  let start = fromMs + OPEN_HOUR * HOUR_MS
  let end = fromMs + CLOSE_HOUR * HOUR_MS
  for (const item of items) {
    start = Math.min(start, floorTo(Math.max(item.slot.start, fromMs), HOUR_MS, fromMs))
    end = Math.max(end, ceilTo(Math.min(item.slot.end, toMs), HOUR_MS, fromMs))
  }
  start = Math.max(start, fromMs)
  end = Math.min(end, toMs)

  const columns = []
  const blocks = []
  const free = []
  let first = 0
  for (const resource of resources) {
    const mine = items.filter(item => item.slot.resource === resource)
    const placed = lanes(mine.map(item => ({
      item, resource, start: Math.max(item.slot.start, start), end: Math.min(item.slot.end, end), holds: HOLDS_SLOT.includes(item.status)
    })))
    const count = Math.max(1, ...placed.map(block => block.lane + 1))
    columns.push({ resource, lanes: count, first })
    first += count
    blocks.push(...placed)
    free.push(...freePieces(resource, mine.filter(item => HOLDS_SLOT.includes(item.status)), start, end))
  }
  return { start, end, columns, blocks, free }
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

/** The free time of one resource between `start` and `end`, cut into pieces (see dayLayout). */
export function freePieces (resource, holding, start, end) {
  const busy = holding.map(item => [item.slot.start, item.slot.end]).sort((a, b) => a[0] - b[0])
  const pieces = []
  let cursor = start
  const offer = (from, to) => {
    for (let at = from; at < to;) {
      const next = Math.min(to, floorTo(at, PIECE_MS, start) + PIECE_MS)
      pieces.push({ resource, start: at, end: next })
      at = next
    }
  }
  for (const [busyStart, busyEnd] of busy) {
    if (busyStart > cursor) offer(cursor, Math.min(busyStart, end))
    cursor = Math.max(cursor, busyEnd)
    if (cursor >= end) break
  }
  if (cursor < end) offer(cursor, end)
  return pieces
}

function floorTo (ms, step, origin) { return origin + Math.floor((ms - origin) / step) * step }
function ceilTo (ms, step, origin) { return origin + Math.ceil((ms - origin) / step) * step }

/** The grid row (1-based, after the header row) where `ms` falls. */
export function rowOf (ms, start) { return 2 + Math.floor((ms - start) / STEP_MS) }

/** The grid row line just after `ms` (a block ending at 09:32 covers the 09:30 row). */
export function rowEnd (ms, start) { return 2 + Math.ceil((ms - start) / STEP_MS) }
