// What the home has genuinely decided about each reservation, in step with Calendar.decision_state
// in engine/calendar.py. Reads plain snapshots of the calendar's root maps (Y.Map.toJSON()): no DOM,
// no Yjs. Checking signatures and digests is asynchronous, so `Decisions.read` answers at once from
// what is known and starts checking the rest; `idle()` resolves when that is done, and the next read
// has the full answer. Until then an unchecked verdict is no decision, and unchecked home records
// trust no verdict at all: nothing shows booked before its verdict verifies.

import {
  CACHE_SIZE, Signatures, Unverifiable, Verifier, readHomeRecord, requestDigest, requestOf, reservationOf, resolveHomeFrom
} from './board-authority.js'
import { comparePy } from './board-canonical.js'

/** model.UNDECIDED: no genuine verdict about the reservation. */
export const UNDECIDED = Object.freeze({
  current: null, booked: null, released: false, reason: '', conflictWith: '', decidedBy: '', seq: 0n
})

// Python ranks a reservation's verdicts by (seq, entry key): the latest holds its slot.
const outranks = (a, b) => a.verdict.seq > b.verdict.seq || (a.verdict.seq === b.verdict.seq && comparePy(a.key, b.key) > 0)

/**
 * Calendar.decision_state over one reservation's verdict entries ([key, text] pairs).
 * `genuine(key, text)` gives the verified verdict or null; `digest` is the current request's
 * digest (null while it is being computed: then no verdict is about the current request yet).
 * Returns { current, booked, released, reason, conflictWith, decidedBy, seq } (model.DecisionState).
 */
export function decisionState (entries, digest, genuine) {
  let current = null
  let latest = null
  for (const [key, text] of entries) {
    const verdict = genuine(key, text)
    if (!verdict) continue // a forgery, another home's, a copy, or not checked yet
    const ranked = { key, verdict }
    if (digest !== null && verdict.request === digest && (current === null || outranks(ranked, current))) current = ranked
    if (latest === null || outranks(ranked, latest)) latest = ranked
  }
  if (latest === null) return UNDECIDED
  const last = latest.verdict
  const shown = current !== null ? current.verdict : last
  return Object.freeze({
    current: current !== null ? current.verdict.outcome : null,
    booked: last.booked,
    released: last.outcome === 'released',
    reason: shown.reason,
    conflictWith: shown.conflictWith,
    decidedBy: last.relayId,
    seq: last.seq
  })
}

/** Verdict entries by reservation id (the entry key up to its first "/"), as Calendar._verdict_index. */
export function indexVerdicts (verdicts) {
  const index = new Map()
  for (const [key, text] of Object.entries(verdicts ?? {})) {
    if (typeof text !== 'string') continue
    const rid = reservationOf(key)
    if (!index.has(rid)) index.set(rid, [])
    index.get(rid).push([key, text])
  }
  return index
}

const UNCHECKABLE = Symbol('this browser cannot check signatures')

/** One calendar's decisions, checked once and cached (see the module comment). */
export class Decisions {
  constructor (calendar, { subtle = globalThis.crypto?.subtle } = {}) {
    this.calendar = calendar
    this.subtle = subtle
    this.signatures = new Signatures(subtle)
    this.verifier = new Verifier(calendar, { signatures: this.signatures })
    this.records = new Map() // home record text -> record | null | UNCHECKABLE | Promise
    this.digests = new Map() // request as JSON -> digest | Promise
    this.inFlight = new Set()
  }

  /**
   * What the home has decided, from snapshots { reservations, homes, verdicts } of the root maps:
   * { hasHome, home, settled, uncheckable, states: Map rid -> DecisionState }. `settled` is false
   * while something is still being checked (call idle() and read again); `uncheckable` is true when
   * this browser cannot check signatures at all (then no verdict counts, ever).
   */
  read ({ reservations, homes, verdicts }) {
    let settled = true
    let uncheckable = false
    const records = []
    for (const text of Object.values(homes ?? {})) {
      if (typeof text !== 'string') continue // read_home_record: not a record
      const record = this._cached(this.records, text, () => readHomeRecord(text, this.calendar, this.signatures).catch(
        error => { if (error instanceof Unverifiable) return UNCHECKABLE; throw error }))
      if (record === undefined) settled = false
      else if (record === UNCHECKABLE) uncheckable = true
      else records.push(record)
    }
    // Records not checked (yet): assume a home, so nothing undecided shows booked, and trust no verdict.
    const home = settled && !uncheckable ? resolveHomeFrom(records) : null
    const hasHome = home !== null || !settled || uncheckable
    const states = new Map()
    if (home !== null) {
      const index = indexVerdicts(verdicts)
      for (const [rid, fields] of Object.entries(reservations ?? {})) {
        const entries = index.get(rid)
        if (!entries || fields === null || typeof fields !== 'object' || Array.isArray(fields)) continue
        const digest = this._cached(this.digests, JSON.stringify(requestOf(rid, fields)),
          () => requestDigest(rid, fields, this.subtle))
        if (digest === undefined) settled = false
        const genuine = (key, text) => {
          const verdict = this.verifier.known(key, text, home)
          if (verdict !== undefined) return verdict
          settled = false
          this._track(this.verifier.verify(key, text, home))
          return null
        }
        states.set(rid, decisionState(entries, digest ?? null, genuine))
      }
    }
    return { hasHome, home, settled, uncheckable, states }
  }

  /** Resolves when everything started so far has been checked. */
  async idle () {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight])
  }

  /** A read that waits until everything is checked (for tests and tools). */
  async readSettled (snapshot) {
    for (;;) {
      const read = this.read(snapshot)
      if (read.settled) return read
      await this.idle()
    }
  }

  /** The cached answer for `key`, or undefined while `start()` computes it (started once). */
  _cached (cache, key, start) {
    const found = cache.get(key)
    if (found !== undefined && !(found instanceof Promise)) return found
    if (found === undefined) {
      if (cache.size >= CACHE_SIZE) cache.clear()
      const promise = start().catch(() => null).then(value => {
        if (cache.get(key) === promise) cache.set(key, value)
        return value
      })
      cache.set(key, promise)
      this._track(promise)
    }
    return undefined
  }

  _track (promise) {
    this.inFlight.add(promise)
    const done = () => this.inFlight.delete(promise)
    promise.then(done, done)
  }
}
