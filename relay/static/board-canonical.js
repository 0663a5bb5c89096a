// Python's bytes, reproduced for the board: the string order, str() and repr() of stored values,
// canonical JSON (json.dumps with sort_keys, no spaces, ensure_ascii) and base64url as Python decodes
// it. engine/authority.py signs, digests and compares these bytes, so the board must make the very
// same ones (tests/test_board_model.py checks them against Python case by case).

const hasOwn = (object, key) => Object.prototype.hasOwnProperty.call(object, key)

// ---- Python's string order, str() and float repr ---------------------------------------------------

const SURROGATE = /[\ud800-\udfff]/

/** Python's str comparison (by code point; JS's `<` compares UTF-16 units): -1, 0 or 1. */
export function comparePy (a, b) {
  if (!SURROGATE.test(a) && !SURROGATE.test(b)) return a < b ? -1 : a > b ? 1 : 0
  const x = Array.from(a, c => c.codePointAt(0))
  const y = Array.from(b, c => c.codePointAt(0))
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1
  return x.length < y.length ? -1 : x.length > y.length ? 1 : 0
}

/** Python's len() of a str (code points). */
export function pyLen (s) {
  return SURROGATE.test(s) ? Array.from(s).length : s.length
}

/** Python's repr() of a float (shortest round trip; exponent outside 1e-4 <= |x| < 1e16). */
export function pyFloatRepr (x) {
  if (Number.isNaN(x)) return 'nan'
  if (!Number.isFinite(x)) return x < 0 ? '-inf' : 'inf'
  const sign = x < 0 || Object.is(x, -0) ? '-' : ''
  const [mantissa, exp] = Math.abs(x).toExponential().split('e')
  const digits = mantissa.replace('.', '')
  const e = Number(exp)
  if (e < -4 || e >= 16) {
    const shown = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits
    return `${sign}${shown}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`
  }
  if (e < 0) return `${sign}0.${'0'.repeat(-e - 1)}${digits}`
  const whole = digits.slice(0, e + 1).padEnd(e + 1, '0')
  return `${sign}${whole}.${digits.slice(e + 1) || '0'}`
}

const I64_MAX = 2n ** 63n - 1n

/** str() of a number as pycrdt reads it: yrs writes whole numbers in i64 range as integers (saturating). */
function pyNumber (x) {
  if (Number.isInteger(x) && x >= -(2 ** 63) && x <= 2 ** 63) {
    const n = BigInt(x)
    return String(n > I64_MAX ? I64_MAX : n)
  }
  return pyFloatRepr(x)
}

const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u

/** Python's repr() of a str. */
function pyStrRepr (s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'"
  let out = quote
  for (const ch of s) {
    const n = ch.codePointAt(0)
    if (ch === quote || ch === '\\') out += '\\' + ch
    else if (ch === '\t') out += '\\t'
    else if (ch === '\n') out += '\\n'
    else if (ch === '\r') out += '\\r'
    else if (n < 0x20 || n === 0x7f) out += '\\x' + n.toString(16).padStart(2, '0')
    else if (n < 0x7f || (ch !== ' ' && !NOT_PRINTABLE.test(ch))) out += ch
    else if (n < 0x100) out += '\\x' + n.toString(16).padStart(2, '0')
    else if (n < 0x10000) out += '\\u' + n.toString(16).padStart(4, '0')
    else out += '\\U' + n.toString(16).padStart(8, '0')
  }
  return out + quote
}

function pyRepr (value) {
  return typeof value === 'string' ? pyStrRepr(value) : pyStr(value)
}

/**
 * Python's str() of a stored value (a reservation field as Y.Map.toJSON() gives it), as
 * `str(fields.get(key))` computes it on pycrdt's reading of the same document. Two limits, for
 * hand-written values only: integers past 2**53 reach JS rounded, and a nested map's key order
 * is yrs's hash order, which not even two Python processes share.
 */
export function pyStr (value) {
  if (typeof value === 'string') return value
  if (value === null || value === undefined) return 'None'
  if (value === true) return 'True'
  if (value === false) return 'False'
  if (typeof value === 'bigint') return String(value)
  if (typeof value === 'number') return pyNumber(value)
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(', ')}]`
  if (typeof value === 'object') return `{${Object.entries(value).map(([k, v]) => `${pyStrRepr(k)}: ${pyRepr(v)}`).join(', ')}}`
  return String(value)
}

/** `str(fields.get(key, fallback))` */
export const fieldStr = (fields, key, fallback = '') => (hasOwn(fields, key) ? pyStr(fields[key]) : fallback)

// ---- canonical JSON -----------------------------------------------------------------------------------

const SHORT_ESCAPES = { '"': '\\"', '\\': '\\\\', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/** A JSON string as Python's ensure_ascii writes it: every unit outside ' '..'~' as \uXXXX (lower-case). */
function quoteAscii (s) {
  let out = '"'
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]
    const n = s.charCodeAt(i)
    if (SHORT_ESCAPES[ch]) out += SHORT_ESCAPES[ch]
    else if (n < 0x20 || n > 0x7e) out += '\\u' + n.toString(16).padStart(4, '0')
    else out += ch
  }
  return out + '"'
}

/**
 * `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`: integers are
 * BigInt (as parseJson gives them), other numbers are Python floats.
 */
export function canonicalJson (value) {
  if (value === null) return 'null'
  if (value === true) return 'true'
  if (value === false) return 'false'
  if (typeof value === 'bigint') return String(value)
  if (typeof value === 'number') {
    if (Number.isNaN(value)) return 'NaN'
    if (!Number.isFinite(value)) return value < 0 ? '-Infinity' : 'Infinity'
    return pyFloatRepr(value)
  }
  if (typeof value === 'string') return quoteAscii(value)
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  const keys = Object.keys(value).sort(comparePy)
  return `{${keys.map(key => `${quoteAscii(key)}:${canonicalJson(value[key])}`).join(',')}}`
}

const NUMBER = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y

/**
 * Standard JSON, with integers as BigInt (so 2**60 survives) and other numbers as Number. Throws
 * SyntaxError. Only canonical text can pass the checks below, so leniency elsewhere never matters.
 */
export function parseJson (text) {
  let i = 0
  const fail = () => { throw new SyntaxError(`not JSON at ${i}`) }
  const space = () => { while (' \t\n\r'.includes(text[i]) && i < text.length) i++ }
  const value = () => {
    space()
    const ch = text[i]
    if (ch === '{') {
      i++
      const out = {}
      space()
      if (text[i] === '}') { i++; return out }
      for (;;) {
        space()
        if (text[i] !== '"') fail()
        const key = string()
        space()
        if (text[i++] !== ':') fail()
        Object.defineProperty(out, key, { value: value(), enumerable: true, writable: true, configurable: true })
        space()
        if (text[i] === ',') { i++; continue }
        if (text[i++] === '}') return out
        fail()
      }
    }
    if (ch === '[') {
      i++
      const out = []
      space()
      if (text[i] === ']') { i++; return out }
      for (;;) {
        out.push(value())
        space()
        if (text[i] === ',') { i++; continue }
        if (text[i++] === ']') return out
        fail()
      }
    }
    if (ch === '"') return string()
    for (const [word, result] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) { i += word.length; return result }
    }
    NUMBER.lastIndex = i
    const number = NUMBER.exec(text)
    if (!number) fail()
    i += number[0].length
    return number[2] || number[3] ? Number(number[0]) : BigInt(number[0])
  }
  const string = () => {
    STRING.lastIndex = i
    const end = STRING.exec(text)
    if (!end) fail()
    i += end[0].length
    return JSON.parse(end[0]) // lone \uD800 escapes stay lone code units, as in Python
  }
  const result = value()
  space()
  if (i !== text.length) fail()
  return result
}

// ---- base64url, as Python decodes it -------------------------------------------------------------------

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const UNB64 = new Int8Array(128).fill(-1)
for (let i = 0; i < 64; i++) UNB64[B64.charCodeAt(i)] = i
UNB64['+'.charCodeAt(0)] = 62 // urlsafe_b64decode maps - and _ to + and /, and keeps + and /
UNB64['/'.charCodeAt(0)] = 63

/** base64url without padding (authority._b64). */
export function b64 (bytes) {
  let out = ''
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0)
    const chars = Math.min(4, Math.ceil(((bytes.length - i) * 8) / 6))
    for (let j = 0; j < chars; j++) out += B64[(n >> (18 - 6 * j)) & 63]
  }
  return out
}

/**
 * authority._unb64: `base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))`, which is lenient
 * (binascii's non-strict mode): it skips characters outside the alphabet, ignores misplaced "="
 * and stops at the first complete padding. A port of CPython's a2b_base64; null where it raises.
 */
export function unb64 (text) {
  if (typeof text !== 'string' || /[^\x00-\x7f]/.test(text)) return null // not ASCII: ValueError
  const padded = text + '='.repeat((4 - (text.length % 4)) % 4)
  const out = []
  let quad = 0
  let left = 0
  let pads = 0
  for (let i = 0; i < padded.length; i++) {
    const ch = padded.charCodeAt(i)
    if (ch === 61) { // '='
      if (quad >= 2 && quad + ++pads >= 4) return Uint8Array.from(out)
      continue
    }
    const v = UNB64[ch]
    if (v < 0) continue
    pads = 0
    if (quad === 0) { left = v; quad = 1 } else if (quad === 1) { out.push((left << 2) | (v >> 4)); left = v & 0x0f; quad = 2 } else if (quad === 2) { out.push(((left << 4) | (v >> 2)) & 0xff); left = v & 0x03; quad = 3 } else { out.push(((left << 6) | v) & 0xff); quad = 0 }
  }
  return quad === 0 ? Uint8Array.from(out) : null // 1 extra data character, or incorrect padding
}
