// Who decides a calendar and what a genuine decision is, in step with accord's engine/authority.py
// and Calendar.decision_state in engine/calendar.py. Pure apart from WebCrypto (SHA-256, Ed25519):
// no DOM, no Yjs, no clock, so node runs it against the Python engine's answers.
//
// Theory of operation. Only a calendar's home relay decides bookings. Its decisions are signed
// verdicts in the root map `verdicts`; who the home is, and with which key, is a chain of signed home
// records in the root map `homes`. A verdict counts only if every check Python makes passes here too,
// on the same bytes, so the board shows what every Python replica shows. That takes Python's bytes
// exactly (board-canonical.js: canonical JSON, lenient base64url, str() of stored values, string
// order) and libsodium's Ed25519 rules, which refuse small-order keys and R points that WebCrypto
// alone accepts (with those anyone could "sign" anything). Checking is asynchronous (WebCrypto);
// board-decisions.js caches the answers and says what is known so far. A verdict of an earlier
// epoch counts when the chain adopted it (a record's `a`: the previous epoch's verdicts with serials
// 1..a, each verdict's `k`), as engine/authority.py explains.

import { b64, canonicalJson, comparePy, fieldStr, parseJson, pyLen, unb64 } from './board-canonical.js'

export const VERDICT_TAG = 'v1'
export const HOME_TAG = 'h1'
export const MAX_ENCODED = 4096 // engine/authority.py: anything longer is not ours
export const CACHE_SIZE = 200_000
export const OUTCOMES = Object.freeze(['booked', 'rejected', 'released'])
export const MAX_SERIAL = 2n ** 53n // authority.MAX_SERIAL

const hasOwn = (object, key) => Object.prototype.hasOwnProperty.call(object, key)

// ---- Ed25519 with libsodium's rules ---------------------------------------------------------------------

const ORDER = 2n ** 252n + 27742317777372353535851937790883648493n
// libsodium's ge25519_has_small_order list (the y of every point of order 1, 2, 4 or 8, and the two
// non-canonical encodings p and p+1); byte 31 is compared without its sign bit.
const SMALL_ORDER = [
  '0000000000000000000000000000000000000000000000000000000000000000',
  '0100000000000000000000000000000000000000000000000000000000000000',
  '26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05',
  'c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a',
  'ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f',
  'eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'
].map(hex => Uint8Array.from(hex.match(/../g), byte => parseInt(byte, 16)))

const BASE_POINT = Uint8Array.from([0x58, ...new Array(31).fill(0x66)])

function hasSmallOrder (point) {
  return SMALL_ORDER.some(bad => bad.every((byte, i) => (i < 31 ? point[i] : point[i] & 0x7f) === byte))
}

/** ge25519_is_canonical: the encoded y is below p = 2**255 - 19. */
function isCanonicalPoint (point) {
  if ((point[31] & 0x7f) !== 0x7f || point[0] < 0xed) return true
  for (let i = 1; i < 31; i++) if (point[i] !== 0xff) return true
  return false
}

function isCanonicalScalar (bytes) {
  let n = 0n
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i])
  return n < ORDER
}

/** This browser cannot check Ed25519 signatures: WebCrypto is missing (it needs an https:// or
 * localhost page) or too old for Ed25519. Then no decision can be shown as genuine. */
export class Unverifiable extends Error {
  constructor () {
    super('this browser cannot check the home relay\'s signatures (WebCrypto Ed25519 needs an https:// or localhost page and a current browser)')
    this.name = 'Unverifiable'
  }
}

/** Ed25519 keys and signatures, checked as PyNaCl (libsodium) checks them; imported keys are cached. */
export class Signatures {
  constructor (subtle = globalThis.crypto?.subtle) {
    this.subtle = subtle
    this.keys = new Map() // public key text -> Promise<CryptoKey | null>
    this.supported = null // Promise<boolean>, probed once
  }

  /** True if WebCrypto here can check Ed25519 at all. */
  usable () {
    if (this.supported === null) {
      this.supported = this.subtle
        ? this.subtle.importKey('raw', BASE_POINT, { name: 'Ed25519' }, false, ['verify']).then(() => true, () => false)
        : Promise.resolve(false)
    }
    return this.supported
  }

  /**
   * authority._verifies: does `signature` sign tag + "\0" + raw under the key encoded in `publicKey`?
   * libsodium refuses non-canonical keys and S, and small-order keys and R, before the curve check.
   * Throws Unverifiable when this browser cannot tell.
   */
  async verifies (publicKey, tag, raw, signature) {
    const pk = unb64(publicKey)
    if (pk === null || pk.length !== 32 || signature.length !== 64) return false
    if (!isCanonicalPoint(pk) || hasSmallOrder(pk)) return false
    if (!isCanonicalScalar(signature.subarray(32)) || hasSmallOrder(signature.subarray(0, 32))) return false
    if (!(await this.usable())) throw new Unverifiable()
    const key = await this._key(publicKey, pk)
    if (key === null) return false
    const message = new Uint8Array(tag.length + 1 + raw.length)
    message.set(new TextEncoder().encode(tag))
    message.set(raw, tag.length + 1)
    try {
      return await this.subtle.verify({ name: 'Ed25519' }, key, signature, message)
    } catch (_) {
      return false
    }
  }

  _key (text, pk) {
    let found = this.keys.get(text)
    if (found === undefined) {
      found = this.subtle.importKey('raw', pk, { name: 'Ed25519' }, false, ['verify']).catch(() => null)
      if (this.keys.size >= 1000) this.keys.clear()
      this.keys.set(text, found)
    }
    return found
  }
}

// ---- signed entries -------------------------------------------------------------------------------------

/**
 * authority._open_signed: { payload, raw, rawBytes, signature } of a well-formed `tag.payload.sig`,
 * else null. `raw` is the payload's decoded bytes as text, kept only when they are ASCII: anything
 * else can never equal the canonical bytes Python compares them with.
 */
export function openSigned (text, tag) {
  if (typeof text !== 'string' || pyLen(text) > MAX_ENCODED) return null
  const parts = text.split('.')
  if (parts.length !== 3 || parts[0] !== tag) return null
  const rawBytes = unb64(parts[1])
  const signature = unb64(parts[2])
  if (rawBytes === null || signature === null || signature.length !== 64 || rawBytes.some(b => b > 0x7e)) return null
  const raw = String.fromCharCode(...rawBytes)
  let payload
  try {
    payload = parseJson(raw)
  } catch (_) {
    return null
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) return null
  return { payload, raw, rawBytes, signature }
}

const strings = (payload, keys) => keys.every(key => hasOwn(payload, key) && typeof payload[key] === 'string')
const integer = (payload, key) => hasOwn(payload, key) && typeof payload[key] === 'bigint'

/** The home record's payload as Python writes it (HomeRecord.payload): `a` only when it adopts. */
const homePayload = r => ({
  c: r.calendar, e: r.epoch, h: r.relayId, k: r.publicKey, s: r.signer, ...(r.adopts === null ? {} : { a: r.adopts })
})

/** authority.is_public_key: `text` decodes (leniently) to the 32 bytes of an Ed25519 public key. */
export function isPublicKey (text) {
  const bytes = unb64(text)
  return bytes !== null && bytes.length === 32
}

/** authority.read_home_record: the record in `text` if well-formed, for `calendar` and signed by its stated signer. */
export async function readHomeRecord (text, calendar, signatures) {
  const opened = openSigned(text, HOME_TAG)
  if (opened === null) return null
  const { payload, raw, rawBytes, signature } = opened
  // Python converts with str() and int(), then demands the canonical bytes back: only exact types pass.
  if (!strings(payload, ['c', 'h', 'k', 's']) || !integer(payload, 'e')) return null
  const adopts = hasOwn(payload, 'a') ? payload.a : null
  if (adopts !== null && (typeof adopts !== 'bigint' || adopts < 0n || adopts > MAX_SERIAL)) return null
  const record = {
    calendar: payload.c, epoch: payload.e, relayId: payload.h, publicKey: payload.k, signer: payload.s, adopts, earlier: []
  }
  if (record.calendar !== calendar || record.epoch < 1n || raw !== canonicalJson(homePayload(record))) return null
  if (record.epoch === 1n && adopts !== null) return null // there is no earlier epoch to adopt
  if ((record.epoch === 1n && record.signer !== record.publicKey) || !isPublicKey(record.publicKey)) return null
  return (await signatures.verifies(record.signer, HOME_TAG, rawBytes, signature)) ? Object.freeze(record) : null
}

/** home_chain's order among one epoch's candidates: relay id, key, then adopting first, fewest adopted. */
function compareCandidates (a, b) {
  const order = comparePy(a.relayId, b.relayId) || comparePy(a.publicKey, b.publicKey)
  if (order !== 0) return order
  if ((a.adopts === null) !== (b.adopts === null)) return a.adopts === null ? 1 : -1
  return a.adopts === b.adopts ? 0 : (a.adopts ?? 0n) < (b.adopts ?? 0n) ? -1 : 1
}

/**
 * authority.resolve_home over already-read records (nulls skipped): epoch 1 is the lowest relay id
 * among self-signed records; each next epoch the lowest relay id among records signed by the previous
 * epoch's key. The home returned carries `earlier` (HomeRecord.earlier: the earlier epochs whose
 * verdicts still count, as { epoch, relayId, publicKey, upto }).
 */
export function resolveHomeFrom (records) {
  const byEpoch = new Map()
  for (const record of records) {
    if (record === null) continue
    const key = String(record.epoch)
    if (!byEpoch.has(key)) byEpoch.set(key, [])
    byEpoch.get(key).push(record)
  }
  let current = null
  for (let epoch = 1n; ; epoch++) {
    const signer = current === null ? null : current.publicKey
    const candidates = (byEpoch.get(String(epoch)) ?? []).filter(r => signer === null || r.signer === signer)
    if (candidates.length === 0) return current
    const chosen = candidates.reduce((best, r) => compareCandidates(r, best) < 0 ? r : best)
    current = current === null || chosen.adopts === null ? chosen : Object.freeze({
      ...chosen,
      earlier: [...current.earlier, { epoch: current.epoch, relayId: current.relayId, publicKey: current.publicKey, upto: chosen.adopts }]
    })
  }
}

/** authority.resolve_home: the calendar's current home from all its `homes` entries (null: no home). */
export async function resolveHome (calendar, entries, signatures = new Signatures()) {
  return resolveHomeFrom(await Promise.all([...entries].map(text => readHomeRecord(text, calendar, signatures))))
}

/** Verdict.payload(): the keys and types Python signs (`k` and `p` only when the verdict has them). */
const verdictPayload = v => ({
  c: v.calendar, r: v.reservation, q: v.request, o: v.outcome, b: v.booked, why: v.reason, w: v.conflictWith,
  h: v.relayId, e: v.epoch, t: v.decidedAt, n: v.seq, ...(v.serial === 0n ? {} : { k: v.serial }),
  ...(v.previous === '' ? {} : { p: v.previous })
})

/** authority._read_verdict, with exact types (anything else fails Python's canonical comparison). */
function readVerdict (payload) {
  if (!strings(payload, ['c', 'r', 'q', 'o', 'why', 'w', 'h', 't']) || !integer(payload, 'e') || !integer(payload, 'n')) return null
  const booked = hasOwn(payload, 'b') ? payload.b : undefined
  const slot = booked === null ? null
    : Array.isArray(booked) && booked.length === 3 && booked.every(part => typeof part === 'string') ? booked : undefined
  if (slot === undefined || !OUTCOMES.includes(payload.o)) return null
  const serial = hasOwn(payload, 'k') ? payload.k : 0n
  const previous = hasOwn(payload, 'p') ? payload.p : ''
  if (typeof serial !== 'bigint' || serial < 0n || serial > MAX_SERIAL || typeof previous !== 'string') return null
  return Object.freeze({
    calendar: payload.c, reservation: payload.r, request: payload.q, outcome: payload.o, booked: slot, reason: payload.why,
    conflictWith: payload.w, relayId: payload.h, epoch: payload.e, decidedAt: payload.t, seq: payload.n, serial, previous
  })
}

/** Verdict.entry_key: where a verdict lives in `verdicts` (its reservation, request and signature). */
export const verdictEntryKey = (verdict, text) => `${verdict.reservation}/${verdict.request}/${text.slice(text.lastIndexOf('.') + 1).slice(0, 22)}`

/**
 * The public key whose signature makes `verdict` genuine under `home` (authority._signer_in), or null:
 * the home's own at its epoch, else an earlier epoch's within what the chain adopted.
 */
function signerIn (verdict, home) {
  if (verdict.epoch === home.epoch) return verdict.relayId === home.relayId ? home.publicKey : null
  const adopted = home.earlier.find(item => item.epoch === verdict.epoch)
  if (adopted === undefined || verdict.relayId !== adopted.relayId || verdict.serial < 1n || verdict.serial > adopted.upto) {
    return null
  }
  return adopted.publicKey
}

/**
 * authority.Verifier: checks verdicts against a calendar's home chain, caching per entry what it is
 * and which keys its signature was checked against (bounded LRU), whatever the current epoch.
 */
export class Verifier {
  constructor (calendar, { signatures = new Signatures(), maxCached = CACHE_SIZE } = {}) {
    this.calendar = calendar
    this.signatures = signatures
    this.maxCached = maxCached
    this.cache = new Map() // [entry key, text] -> { verdict: Verdict | null, signedBy: Map key -> boolean | Promise }
  }

  /** What verify() found, if it has finished: a verdict, null (not genuine), or undefined (not known yet). */
  known (entryKey, text, home) {
    if (home === null || typeof text !== 'string') return null
    const entry = this._entry(entryKey, text)
    const signer = entry.verdict === null ? null : signerIn(entry.verdict, home)
    if (signer === null) return null
    const valid = entry.signedBy.get(signer)
    if (valid === undefined || valid instanceof Promise) return undefined
    return valid ? entry.verdict : null
  }

  /** The verdict stored under `entryKey` if it is genuine (Verifier.verify), else null. */
  verify (entryKey, text, home) {
    if (home === null || typeof text !== 'string') return Promise.resolve(null)
    const entry = this._entry(entryKey, text)
    const signer = entry.verdict === null ? null : signerIn(entry.verdict, home)
    if (signer === null) return Promise.resolve(null)
    let valid = entry.signedBy.get(signer)
    if (valid === undefined) {
      const opened = openSigned(text, VERDICT_TAG)
      const checking = this.signatures.verifies(signer, VERDICT_TAG, opened.rawBytes, opened.signature).catch(() => false)
        .then(found => {
          if (entry.signedBy.get(signer) === checking) entry.signedBy.set(signer, found)
          return found
        })
      entry.signedBy.set(signer, checking)
      valid = checking
    }
    return Promise.resolve(valid).then(found => found ? entry.verdict : null)
  }

  /** The cached opening of one stored entry (made, cheaply and synchronously, on first sight). */
  _entry (entryKey, text) {
    const key = JSON.stringify([entryKey, text])
    let entry = this.cache.get(key)
    if (entry === undefined) {
      entry = { verdict: this._open(entryKey, text), signedBy: new Map() }
      if (this.cache.size >= this.maxCached) this.cache.delete(this.cache.keys().next().value)
    } else {
      this.cache.delete(key)
    }
    this.cache.set(key, entry)
    return entry
  }

  /** authority.Verifier._open: the verdict if well-formed, for this calendar and stored under its own key. */
  _open (entryKey, text) {
    const opened = openSigned(text, VERDICT_TAG)
    if (opened === null) return null
    const verdict = readVerdict(opened.payload)
    if (verdict === null || verdict.calendar !== this.calendar || verdictEntryKey(verdict, text) !== entryKey ||
        opened.raw !== canonicalJson(verdictPayload(verdict))) {
      return null
    }
    return verdict
  }
}

// ---- request digests ------------------------------------------------------------------------------------

/** The request a verdict decides, as authority.request_digest reads it from the fields. */
export const requestOf = (reservationId, fields) =>
  [reservationId, ...['resource', 'start', 'end', 'requested_at'].map(key => requestPart(fields, key))]

/** authority._request_part: a string as it is; anything else (hand-written, invalid) as one marker. */
function requestPart (fields, key) {
  if (!Object.prototype.hasOwnProperty.call(fields, key)) return ''
  const value = fields[key]
  return typeof value === 'string' ? value : '\u0000'
}

/** authority.reservation_of: the reservation a verdicts entry key is filed under (ids may hold "/"). */
export function reservationOf (entryKey) {
  const parts = entryKey.split('/')
  return parts.length > 2 ? parts.slice(0, -2).join('/') : parts[0]
}

/** authority.request_digest: sha256 of the canonical JSON {"q": request}, first 16 bytes, base64url. */
export async function requestDigest (reservationId, fields, subtle = globalThis.crypto?.subtle) {
  const bytes = new TextEncoder().encode(canonicalJson({ q: requestOf(reservationId, fields) }))
  return b64(new Uint8Array(await subtle.digest('SHA-256', bytes)).subarray(0, 16))
}
