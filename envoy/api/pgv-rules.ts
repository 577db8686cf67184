import net from 'node:net';
import type protobuf from 'protobufjs';
import { formatDuration, formatTimestamp, is64Bit, joinNanos, type ScalarName } from './json-wkt.js';
import { re2ToJs } from './re2.js';

/**
 * protoc-gen-validate (`validate.rules`) checks, compiled once per field into closures. Envoy runs
 * the same rules (C++ PGV) when it loads a resource; a failure here is a NACK avoided.
 *
 * The raw rules come from protobufjs's `parsedOptions` (the structured form: it keeps repeated
 * values such as `string.in` and empty sub-messages such as `duration.gt = {}`, which the
 * flattened `options` map loses).
 */

export type Emit = (path: string, rule: string, message: string) => void;
export type Check = (v: unknown, path: string, emit: Emit) => void;

/** What a rule set is checked against, after unwrapping wrapper types (UInt32Value → uint32). */
export type RuleTarget =
  | { kind: 'scalar'; t: ScalarName }
  | { kind: 'enum'; e: protobuf.Enum }
  | { kind: 'duration' }
  | { kind: 'timestamp' }
  | { kind: 'any' }
  | { kind: 'message' };

export interface ElementRules {
  /** Checks a present element's parsed value (number/bigint/string/bytes/enum number/nanos/type URL). */
  check?: Check;
  /** Set when the element (a message-typed field) must be present. */
  required?: { rule: string; message: string };
  /** `message.skip`: do not descend into the message. */
  skip: boolean;
}

export interface RepeatedRules {
  /** Checks the list as a whole (count, uniqueness) given the parsed items. */
  check?: (items: readonly unknown[], count: number, path: string, emit: Emit) => void;
  items?: ElementRules;
}

export interface MapRules {
  check?: (pairs: number, path: string, emit: Emit) => void;
  keys?: ElementRules;
  values?: ElementRules;
}

export interface FieldRules {
  element?: ElementRules;
  repeated?: RepeatedRules;
  map?: MapRules;
}

export interface FieldShape {
  repeated: boolean;
  map: boolean;
  target: RuleTarget;
  keyTarget?: RuleTarget;
}

/** Rule kinds present on loaded fields that this module does not check, with the first field seen. */
const unchecked = new Map<string, string>();
/** Rule kinds present on loaded fields that are checked. */
const checked = new Set<string>();
export const UNCHECKED_RULE_KINDS: ReadonlyMap<string, string> = unchecked;
/** The field being compiled, recorded next to an unchecked rule kind. */
let compiling = '';
export const CHECKED_RULE_KINDS: ReadonlySet<string> = checked;

type Raw = Record<string, unknown>;

function isRaw(v: unknown): v is Raw {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Deep-merges the `(validate.rules)` entries of a field's parsedOptions. */
export function rawRules(parsedOptions: readonly Raw[] | null | undefined, key = '(validate.rules)'): Raw | undefined {
  if (!parsedOptions) return undefined;
  let out: Raw | undefined;
  for (const po of parsedOptions) {
    const r = po[key];
    if (!isRaw(r)) continue;
    out = out ? merge(out, r) : r;
  }
  return out;
}

function merge(a: Raw, b: Raw): Raw {
  const out: Raw = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const prev = out[k];
    if (isRaw(prev) && isRaw(v)) out[k] = merge(prev, v);
    else if (prev !== undefined && (k === 'in' || k === 'not_in')) out[k] = [...asList(prev), ...asList(v)];
    else out[k] = v;
  }
  return out;
}

function asList(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [v];
}

// ---------------------------------------------------------------------------------------------
// Rule names and messages

function fmtValue(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(fmtValue).join(', ')}]`;
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'string') return v;
  return String(v);
}

function ruleName(prefix: string, kind: string, key: string, v: unknown): string {
  return v === true ? `${prefix}${kind}.${key}` : `${prefix}${kind}.${key} = ${fmtValue(v)}`;
}

function quote(s: string): string {
  return JSON.stringify(s);
}

function toBigInt(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') return BigInt(Math.trunc(v));
  return BigInt(String(v));
}

function durationNanos(v: unknown): bigint {
  if (!isRaw(v)) return 0n;
  return joinNanos(v.seconds === undefined ? 0n : toBigInt(v.seconds), v.nanos === undefined ? 0 : Number(v.nanos));
}

// ---------------------------------------------------------------------------------------------
// Compilation

export function compileFieldRules(raw: Raw, shape: FieldShape, where = ''): FieldRules {
  compiling = where;
  const out: FieldRules = {};
  if (shape.map) {
    const m = raw.map;
    const rest = Object.keys(raw).filter((k) => k !== 'map');
    for (const k of rest) markUnchecked(`${k} (on a map field)`);
    if (isRaw(m)) out.map = compileMap(m, shape);
    return out;
  }
  if (shape.repeated) {
    const r = raw.repeated;
    const rest = Object.keys(raw).filter((k) => k !== 'repeated');
    for (const k of rest) markUnchecked(`${k} (on a repeated field)`);
    if (isRaw(r)) out.repeated = compileRepeated(r, shape.target);
    return out;
  }
  out.element = compileElement(raw, shape.target, '');
  return out;
}

function markUnchecked(kind: string): void {
  if (!unchecked.has(kind)) unchecked.set(kind, compiling);
}

function markChecked(kind: string): void {
  checked.add(kind);
}

function compileRepeated(r: Raw, target: RuleTarget): RepeatedRules {
  const out: RepeatedRules = {};
  let min: number | undefined;
  let max: number | undefined;
  let unique = false;
  let ignoreEmpty = false;
  for (const [k, v] of Object.entries(r)) {
    switch (k) {
      case 'min_items':
        min = Number(v);
        break;
      case 'max_items':
        max = Number(v);
        break;
      case 'unique':
        unique = v === true;
        break;
      case 'ignore_empty':
        ignoreEmpty = v === true;
        break;
      case 'items':
        if (isRaw(v)) out.items = compileElement(v, target, 'repeated.items.');
        continue;
      default:
        markUnchecked(`repeated.${k}`);
        continue;
    }
    markChecked(`repeated.${k}`);
  }
  if (min !== undefined || max !== undefined || unique) {
    out.check = (items, count, path, emit) => {
      if (ignoreEmpty && count === 0) return;
      if (min !== undefined && count < min) {
        emit(path, `repeated.min_items = ${min}`, `must have at least ${min} item${min === 1 ? '' : 's'}, has ${count}`);
      }
      if (max !== undefined && count > max) {
        emit(path, `repeated.max_items = ${max}`, `must have at most ${max} item${max === 1 ? '' : 's'}, has ${count}`);
      }
      if (unique) {
        const seen = new Map<string, number>();
        items.forEach((it, i) => {
          if (typeof it === 'symbol') return;
          const key = uniqueKey(it);
          const first = seen.get(key);
          if (first !== undefined) emit(`${path}[${i}]`, 'repeated.unique', `duplicates item [${first}]; items must be unique`);
          else seen.set(key, i);
        });
      }
    };
  }
  return out;
}

function uniqueKey(v: unknown): string {
  if (typeof v === 'bigint') return `n${v}`;
  if (v instanceof Uint8Array) return `b${Buffer.from(v).toString('base64')}`;
  return `j${JSON.stringify(v)}`;
}

function compileMap(m: Raw, shape: FieldShape): MapRules {
  const out: MapRules = {};
  let min: number | undefined;
  let max: number | undefined;
  let ignoreEmpty = false;
  for (const [k, v] of Object.entries(m)) {
    switch (k) {
      case 'min_pairs':
        min = Number(v);
        break;
      case 'max_pairs':
        max = Number(v);
        break;
      case 'ignore_empty':
        ignoreEmpty = v === true;
        break;
      case 'no_sparse':
        // Sparse entries (a null message value) are rejected as a type error already.
        break;
      case 'keys':
        if (isRaw(v) && shape.keyTarget) out.keys = compileElement(v, shape.keyTarget, 'map.keys.');
        continue;
      case 'values':
        if (isRaw(v)) out.values = compileElement(v, shape.target, 'map.values.');
        continue;
      default:
        markUnchecked(`map.${k}`);
        continue;
    }
    markChecked(`map.${k}`);
  }
  if (min !== undefined || max !== undefined) {
    out.check = (pairs, path, emit) => {
      if (ignoreEmpty && pairs === 0) return;
      if (min !== undefined && pairs < min) emit(path, `map.min_pairs = ${min}`, `must have at least ${min} entr${min === 1 ? 'y' : 'ies'}, has ${pairs}`);
      if (max !== undefined && pairs > max) emit(path, `map.max_pairs = ${max}`, `must have at most ${max} entr${max === 1 ? 'y' : 'ies'}, has ${pairs}`);
    };
  }
  return out;
}

const NUMERIC_KINDS = new Set([
  'double', 'float', 'int32', 'uint32', 'sint32', 'fixed32', 'sfixed32',
  'int64', 'uint64', 'sint64', 'fixed64', 'sfixed64',
]);

const KNOWN_KINDS = new Set([...NUMERIC_KINDS, 'bool', 'string', 'bytes', 'enum', 'duration', 'timestamp', 'any']);

/** Rules for one value (a singular field, a list item, a map key or value). */
export function compileElement(raw: Raw, target: RuleTarget, prefix: string): ElementRules {
  const out: ElementRules = { skip: false };
  const checks: Check[] = [];
  for (const [kind, body] of Object.entries(raw)) {
    if (kind === 'message') {
      if (!isRaw(body)) continue;
      for (const [k, v] of Object.entries(body)) {
        if (k === 'required') {
          if (v === true) out.required = { rule: `${prefix}message.required`, message: 'is required' };
        } else if (k === 'skip') out.skip = v === true;
        else {
          markUnchecked(`message.${k}`);
          continue;
        }
        markChecked(`message.${k}`);
      }
      continue;
    }
    if (!isRaw(body) || !KNOWN_KINDS.has(kind)) {
      markUnchecked(kind);
      continue;
    }
    if (target.kind === 'message' && (kind === 'any' || kind === 'duration' || kind === 'timestamp')) {
      // PGV renders `required` of these kinds as a presence check whatever the message type
      // (Envoy has `ConfigSource config_source = 1 [(validate.rules).any = {required: true}]`).
      for (const [k, v] of Object.entries(body)) {
        if (k === 'required') {
          if (v === true) out.required = { rule: `${prefix}${kind}.required`, message: 'is required' };
          markChecked(`${kind}.required`);
        } else markUnchecked(`${kind}.${k} (on a message field)`);
      }
      continue;
    }
    if (!targetAccepts(target, kind)) {
      markUnchecked(`${kind} (on a ${targetLabel(target)} field)`);
      continue;
    }
    let c: Check | undefined;
    if (NUMERIC_KINDS.has(kind)) c = compileNumeric(kind as ScalarName, body, prefix);
    else if (kind === 'bool') c = compileBool(body, prefix);
    else if (kind === 'string') c = compileString(body, prefix);
    else if (kind === 'bytes') c = compileBytes(body, prefix);
    else if (kind === 'enum') c = compileEnum(body, prefix, (target as { e: protobuf.Enum }).e);
    else if (kind === 'duration') c = compileTime('duration', body, prefix, out);
    else if (kind === 'timestamp') c = compileTime('timestamp', body, prefix, out);
    else if (kind === 'any') c = compileAny(body, prefix, out);
    else {
      markUnchecked(kind);
      continue;
    }
    if (c) checks.push(c);
  }
  if (checks.length === 1) out.check = checks[0];
  else if (checks.length > 1) {
    out.check = (v, path, emit) => {
      for (const c of checks) c(v, path, emit);
    };
  }
  return out;
}

function targetAccepts(target: RuleTarget, kind: string): boolean {
  switch (target.kind) {
    case 'scalar':
      return target.t === kind;
    case 'enum':
      return kind === 'enum';
    case 'duration':
    case 'timestamp':
    case 'any':
      return target.kind === kind;
    case 'message':
      return false;
  }
}

function targetLabel(t: RuleTarget): string {
  return t.kind === 'scalar' ? t.t : t.kind;
}

interface Bounds<T> {
  lt?: T;
  lte?: T;
  gt?: T;
  gte?: T;
}

/**
 * PGV range semantics: with a lower and an upper bound where upper < lower, the value must lie
 * outside the range; otherwise each bound applies.
 */
function boundsCheck<T extends number | bigint>(
  b: Bounds<T>,
  kind: string,
  prefix: string,
  show: (v: T) => string,
): ((v: T, path: string, emit: Emit) => void) | undefined {
  const { lt, lte, gt, gte } = b;
  const lowerKey = gt !== undefined ? 'gt' : gte !== undefined ? 'gte' : undefined;
  const upperKey = lt !== undefined ? 'lt' : lte !== undefined ? 'lte' : undefined;
  if (!lowerKey && !upperKey) return undefined;
  const lower = (gt ?? gte) as T | undefined;
  const upper = (lt ?? lte) as T | undefined;
  const exclusive =
    lower !== undefined && upper !== undefined && (upper < lower || (upper === lower && (lowerKey === 'gt' || upperKey === 'lt')));
  const tooLow = (v: T): boolean => (gt !== undefined ? !(v > gt) : gte !== undefined ? !(v >= gte) : false);
  const tooHigh = (v: T): boolean => (lt !== undefined ? !(v < lt) : lte !== undefined ? !(v <= lte) : false);
  const lowMsg = gt !== undefined ? `must be greater than ${show(gt)}` : gte !== undefined ? `must be at least ${show(gte)}` : '';
  const highMsg = lt !== undefined ? `must be less than ${show(lt)}` : lte !== undefined ? `must be at most ${show(lte)}` : '';
  const lowRule = lowerKey ? `${prefix}${kind}.${lowerKey} = ${show(lower!)}` : '';
  const highRule = upperKey ? `${prefix}${kind}.${upperKey} = ${show(upper!)}` : '';
  if (exclusive) {
    const highMsgX = lt !== undefined ? `less than ${show(lt)}` : `at most ${show(lte!)}`;
    const lowMsgX = gt !== undefined ? `greater than ${show(gt)}` : `at least ${show(gte!)}`;
    return (v, path, emit) => {
      if (tooLow(v) && tooHigh(v)) emit(path, `${lowRule}, ${highRule}`, `must be ${highMsgX} or ${lowMsgX}, got ${show(v)}`);
    };
  }
  return (v, path, emit) => {
    if (tooLow(v)) emit(path, lowRule, `${lowMsg}, got ${show(v)}`);
    if (tooHigh(v)) emit(path, highRule, `${highMsg}, got ${show(v)}`);
  };
}

function compileNumeric(kind: ScalarName, body: Raw, prefix: string): Check | undefined {
  const big = is64Bit(kind);
  const conv = (x: unknown): number | bigint => (big ? toBigInt(x) : Number(x));
  const bounds: Bounds<number | bigint> = {};
  let konst: number | bigint | undefined;
  let inList: (number | bigint)[] | undefined;
  let notIn: (number | bigint)[] | undefined;
  let ignoreEmpty = false;
  for (const [k, v] of Object.entries(body)) {
    switch (k) {
      case 'const':
        konst = conv(v);
        break;
      case 'lt':
      case 'lte':
      case 'gt':
      case 'gte':
        bounds[k] = conv(v);
        break;
      case 'in':
        inList = asList(v).map(conv);
        break;
      case 'not_in':
        notIn = asList(v).map(conv);
        break;
      case 'ignore_empty':
        ignoreEmpty = v === true;
        break;
      default:
        markUnchecked(`${kind}.${k}`);
        continue;
    }
    markChecked(`${kind}.${k}`);
  }
  const show = (x: number | bigint): string => String(x);
  const range = boundsCheck(bounds, kind, prefix, show);
  const eq = (a: number | bigint, b: number | bigint): boolean => a == b;
  return (raw, path, emit) => {
    const v = raw as number | bigint;
    if (ignoreEmpty && v == 0) return;
    if (konst !== undefined && !eq(v, konst)) emit(path, `${prefix}${kind}.const = ${konst}`, `must equal ${konst}, got ${v}`);
    if (inList && !inList.some((x) => eq(x, v))) emit(path, ruleName(prefix, kind, 'in', inList), `must be one of ${fmtValue(inList)}, got ${v}`);
    if (notIn && notIn.some((x) => eq(x, v))) emit(path, ruleName(prefix, kind, 'not_in', notIn), `must not be one of ${fmtValue(notIn)}, got ${v}`);
    range?.(v, path, emit);
  };
}

function compileBool(body: Raw, prefix: string): Check | undefined {
  let konst: boolean | undefined;
  for (const [k, v] of Object.entries(body)) {
    if (k === 'const') {
      konst = v === true;
      markChecked('bool.const');
    } else markUnchecked(`bool.${k}`);
  }
  if (konst === undefined) return undefined;
  return (v, path, emit) => {
    if (v !== konst) emit(path, `${prefix}bool.const = ${konst}`, `must be ${konst}`);
  };
}

function compileEnum(body: Raw, prefix: string, e: protobuf.Enum): Check | undefined {
  const checks: Check[] = [];
  const name = (n: number): string => (e.valuesById[n] !== undefined ? `${e.valuesById[n]}` : String(n));
  const names = (l: number[]): string => `[${l.map(name).join(', ')}]`;
  const toNum = (x: unknown): number => (typeof x === 'string' && e.values[x] !== undefined ? e.values[x]! : Number(x));
  for (const [k, v] of Object.entries(body)) {
    switch (k) {
      case 'const': {
        const c = toNum(v);
        checks.push((x, path, emit) => {
          if (x !== c) emit(path, `${prefix}enum.const = ${name(c)}`, `must be ${name(c)}, got ${name(x as number)}`);
        });
        break;
      }
      case 'defined_only':
        if (v === true) {
          checks.push((x, path, emit) => {
            if (e.valuesById[x as number] === undefined) {
              emit(path, `${prefix}enum.defined_only`, `${x} is not a defined value of ${e.name} (${Object.keys(e.values).join(', ')})`);
            }
          });
        }
        break;
      case 'in': {
        const l = asList(v).map(toNum);
        checks.push((x, path, emit) => {
          if (!l.includes(x as number)) emit(path, `${prefix}enum.in = ${names(l)}`, `must be one of ${names(l)}, got ${name(x as number)}`);
        });
        break;
      }
      case 'not_in': {
        const l = asList(v).map(toNum);
        checks.push((x, path, emit) => {
          if (l.includes(x as number)) emit(path, `${prefix}enum.not_in = ${names(l)}`, `must not be one of ${names(l)}`);
        });
        break;
      }
      default:
        markUnchecked(`enum.${k}`);
        continue;
    }
    markChecked(`enum.${k}`);
  }
  return combine(checks);
}

function combine(checks: Check[]): Check | undefined {
  if (checks.length === 0) return undefined;
  if (checks.length === 1) return checks[0];
  return (v, path, emit) => {
    for (const c of checks) c(v, path, emit);
  };
}

function compileTime(kind: 'duration' | 'timestamp', body: Raw, prefix: string, out: ElementRules): Check | undefined {
  const show = kind === 'duration' ? formatDuration : formatTimestamp;
  const bounds: Bounds<bigint> = {};
  const checks: Check[] = [];
  for (const [k, v] of Object.entries(body)) {
    switch (k) {
      case 'required':
        if (v === true) out.required = { rule: `${prefix}${kind}.required`, message: 'is required' };
        break;
      case 'lt':
      case 'lte':
      case 'gt':
      case 'gte':
        bounds[k] = durationNanos(v);
        break;
      case 'const': {
        const c = durationNanos(v);
        checks.push((x, path, emit) => {
          if (x !== c) emit(path, `${prefix}${kind}.const = ${show(c)}`, `must equal ${show(c)}`);
        });
        break;
      }
      case 'in':
      case 'not_in': {
        if (kind !== 'duration') {
          markUnchecked(`${kind}.${k}`);
          continue;
        }
        const l = asList(v).map(durationNanos);
        const shown = `[${l.map(formatDuration).join(', ')}]`;
        checks.push((x, path, emit) => {
          const found = l.includes(x as bigint);
          if (k === 'in' && !found) emit(path, `${prefix}duration.in = ${shown}`, `must be one of ${shown}, got ${show(x as bigint)}`);
          if (k === 'not_in' && found) emit(path, `${prefix}duration.not_in = ${shown}`, `must not be one of ${shown}`);
        });
        break;
      }
      case 'lt_now':
      case 'gt_now':
        if (kind !== 'timestamp') {
          markUnchecked(`${kind}.${k}`);
          continue;
        }
        if (v === true) {
          checks.push((x, path, emit) => {
            const now = BigInt(Date.now()) * 1_000_000n;
            if (k === 'lt_now' && !((x as bigint) < now)) emit(path, `${prefix}timestamp.lt_now`, 'must be in the past');
            if (k === 'gt_now' && !((x as bigint) > now)) emit(path, `${prefix}timestamp.gt_now`, 'must be in the future');
          });
        }
        break;
      case 'within': {
        if (kind !== 'timestamp') {
          markUnchecked(`${kind}.${k}`);
          continue;
        }
        const w = durationNanos(v);
        checks.push((x, path, emit) => {
          const now = BigInt(Date.now()) * 1_000_000n;
          const d = (x as bigint) - now;
          if ((d < 0n ? -d : d) > w) emit(path, `${prefix}timestamp.within = ${formatDuration(w)}`, `must be within ${formatDuration(w)} of now`);
        });
        break;
      }
      default:
        markUnchecked(`${kind}.${k}`);
        continue;
    }
    markChecked(`${kind}.${k}`);
  }
  const range = boundsCheck(bounds, kind, prefix, show);
  if (range) checks.push(range as Check);
  return combine(checks);
}

function compileAny(body: Raw, prefix: string, out: ElementRules): Check | undefined {
  const checks: Check[] = [];
  for (const [k, v] of Object.entries(body)) {
    switch (k) {
      case 'required':
        if (v === true) out.required = { rule: `${prefix}any.required`, message: 'is required' };
        break;
      case 'in': {
        const l = asList(v).map(String);
        checks.push((x, path, emit) => {
          if (!l.includes(x as string)) emit(path, ruleName(prefix, 'any', 'in', l), `type ${x as string} is not one of ${fmtValue(l)}`);
        });
        break;
      }
      case 'not_in': {
        const l = asList(v).map(String);
        checks.push((x, path, emit) => {
          if (l.includes(x as string)) emit(path, ruleName(prefix, 'any', 'not_in', l), `type ${x as string} is not allowed here`);
        });
        break;
      }
      default:
        markUnchecked(`any.${k}`);
        continue;
    }
    markChecked(`any.${k}`);
  }
  return combine(checks);
}

// ---------------------------------------------------------------------------------------------
// Strings and bytes

/** protoc-gen-validate's well-known header regexes (RE2 `+-.` in a class is the range + , - .). */
const HEADER_NAME_STRICT = /^:?[0-9a-zA-Z!#$%&'*+,\-.^_|~`]+$/;
const HEADER_VALUE_STRICT = /^[^\u0000-\u0008\u000A-\u001F\u007F]*$/;
const HEADER_STRING_LOOSE = /^[^\u0000\u000A\u000D]*$/;

function codePoints(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

function plural(n: number, unit: string): string {
  return `${n} ${unit}${n === 1 ? '' : 's'}`;
}

export function isHostname(s: string): boolean {
  if (s.length === 0 || s.length > 253) return false;
  const h = s.endsWith('.') ? s.slice(0, -1) : s;
  if (h.length === 0) return false;
  for (const label of h.split('.')) {
    if (label.length === 0 || label.length > 63) return false;
    if (!/^[A-Za-z0-9-]+$/.test(label)) return false;
    if (label.startsWith('-') || label.endsWith('-')) return false;
  }
  return true;
}

export function isEmail(s: string): boolean {
  let addr = s;
  const angle = /<([^<>]*)>\s*$/.exec(s);
  if (angle) addr = angle[1]!;
  if (addr.length > 254) return false;
  const at = addr.lastIndexOf('@');
  if (at <= 0) return false;
  const local = addr.slice(0, at);
  if (local.length > 64 || /[\s<>()[\]\\,;:@"]/.test(local)) return false;
  return isHostname(addr.slice(at + 1));
}

function isUri(s: string): boolean {
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:/.test(s)) return false;
  try {
    new URL(s);
    return true;
  } catch {
    return false;
  }
}

function isUriRef(s: string): boolean {
  if (/[\s\u0000-\u001f\u007f]/.test(s)) return false;
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(s)) return isUri(s);
  try {
    new URL(s, 'http://base.invalid/');
    return true;
  } catch {
    return false;
  }
}

const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

const STRING_FORMATS: Record<string, { test: (s: string) => boolean; what: string }> = {
  email: { test: isEmail, what: 'a valid email address' },
  hostname: { test: isHostname, what: 'a valid hostname' },
  ip: { test: (s) => net.isIP(s) !== 0, what: 'a valid IP address' },
  ipv4: { test: (s) => net.isIPv4(s), what: 'a valid IPv4 address' },
  ipv6: { test: (s) => net.isIPv6(s), what: 'a valid IPv6 address' },
  uri: { test: isUri, what: 'an absolute URI' },
  uri_ref: { test: isUriRef, what: 'a URI reference' },
  address: { test: (s) => net.isIP(s) !== 0 || isHostname(s), what: 'a valid hostname or IP address' },
  uuid: { test: (s) => UUID_RE.test(s), what: 'a UUID' },
};

function compileString(body: Raw, prefix: string): Check | undefined {
  const checks: ((s: string, path: string, emit: Emit) => void)[] = [];
  const ignoreEmpty = body.ignore_empty === true;
  const strict = body.strict !== false;
  const r = (k: string, v: unknown): string => ruleName(prefix, 'string', k, v);
  for (const [k, v] of Object.entries(body)) {
    switch (k) {
      case 'ignore_empty':
      case 'strict':
        break;
      case 'const': {
        const c = String(v);
        checks.push((s, path, emit) => {
          if (s !== c) emit(path, `${prefix}string.const = ${quote(c)}`, `must equal ${quote(c)}`);
        });
        break;
      }
      case 'len':
      case 'min_len':
      case 'max_len': {
        const n = Number(v);
        const rule = r(k, n);
        checks.push((s, path, emit) => {
          // UTF-16 length bounds the code point count from above: skip the exact count when it cannot matter.
          if (k === 'min_len' && s.length < n) emit(path, rule, `must be at least ${plural(n, 'character')} long`);
          else if (k === 'min_len' && s.length >= 2 * n) return;
          else {
            const cp = codePoints(s);
            if (k === 'min_len' && cp < n) emit(path, rule, `must be at least ${plural(n, 'character')} long`);
            if (k === 'max_len' && cp > n) emit(path, rule, `must be at most ${plural(n, 'character')} long, is ${cp}`);
            if (k === 'len' && cp !== n) emit(path, rule, `must be exactly ${plural(n, 'character')} long, is ${cp}`);
          }
        });
        break;
      }
      case 'len_bytes':
      case 'min_bytes':
      case 'max_bytes': {
        const n = Number(v);
        const rule = r(k, n);
        checks.push((s, path, emit) => {
          if (k === 'max_bytes' && s.length * 3 <= n) return;
          const b = Buffer.byteLength(s, 'utf8');
          if (k === 'min_bytes' && b < n) emit(path, rule, `must be at least ${plural(n, 'byte')} long`);
          if (k === 'max_bytes' && b > n) emit(path, rule, `must be at most ${plural(n, 'byte')} long, is ${b}`);
          if (k === 'len_bytes' && b !== n) emit(path, rule, `must be exactly ${plural(n, 'byte')} long, is ${b}`);
        });
        break;
      }
      case 'pattern': {
        const re = re2ToJs(String(v));
        if (!re) {
          markUnchecked(`string.pattern (untranslatable: ${String(v)})`);
          continue;
        }
        const rule = r(k, String(v));
        checks.push((s, path, emit) => {
          if (!re.test(s)) emit(path, rule, `must match the pattern ${String(v)}`);
        });
        break;
      }
      case 'prefix':
      case 'suffix':
      case 'contains':
      case 'not_contains': {
        const x = String(v);
        const rule = `${prefix}string.${k} = ${quote(x)}`;
        checks.push((s, path, emit) => {
          if (k === 'prefix' && !s.startsWith(x)) emit(path, rule, `must start with ${quote(x)}`);
          if (k === 'suffix' && !s.endsWith(x)) emit(path, rule, `must end with ${quote(x)}`);
          if (k === 'contains' && !s.includes(x)) emit(path, rule, `must contain ${quote(x)}`);
          if (k === 'not_contains' && s.includes(x)) emit(path, rule, `must not contain ${quote(x)}`);
        });
        break;
      }
      case 'in':
      case 'not_in': {
        const l = asList(v).map(String);
        const set = new Set(l);
        const rule = r(k, l);
        checks.push((s, path, emit) => {
          if (k === 'in' && !set.has(s)) emit(path, rule, `must be one of ${fmtValue(l)}, got ${quote(s)}`);
          if (k === 'not_in' && set.has(s)) emit(path, rule, `must not be one of ${fmtValue(l)}`);
        });
        break;
      }
      case 'well_known_regex': {
        const which = String(v);
        const re =
          which === 'HTTP_HEADER_NAME' || which === '1'
            ? strict
              ? HEADER_NAME_STRICT
              : HEADER_STRING_LOOSE
            : which === 'HTTP_HEADER_VALUE' || which === '2'
              ? strict
                ? HEADER_VALUE_STRICT
                : HEADER_STRING_LOOSE
              : undefined;
        if (!re) {
          markUnchecked(`string.well_known_regex = ${which}`);
          continue;
        }
        const label = which === 'HTTP_HEADER_NAME' || which === '1' ? 'HTTP header name' : 'HTTP header value';
        const rule = `${prefix}string.well_known_regex = ${label === 'HTTP header name' ? 'HTTP_HEADER_NAME' : 'HTTP_HEADER_VALUE'}`;
        const why = strict ? '' : ' (it must not contain NUL, CR or LF)';
        checks.push((s, path, emit) => {
          if (!re.test(s)) emit(path, rule, `${quote(s)} is not a valid ${label}${why}`);
        });
        break;
      }
      default: {
        const fmt = STRING_FORMATS[k];
        if (!fmt) {
          markUnchecked(`string.${k}`);
          continue;
        }
        if (v !== true) break;
        const rule = `${prefix}string.${k}`;
        checks.push((s, path, emit) => {
          if (!fmt.test(s)) emit(path, rule, `${quote(s)} is not ${fmt.what}`);
        });
      }
    }
    markChecked(`string.${k}`);
  }
  if (checks.length === 0) return undefined;
  return (v, path, emit) => {
    const s = v as string;
    if (ignoreEmpty && s === '') return;
    for (const c of checks) c(s, path, emit);
  };
}

function compileBytes(body: Raw, prefix: string): Check | undefined {
  const checks: ((b: Buffer, path: string, emit: Emit) => void)[] = [];
  const ignoreEmpty = body.ignore_empty === true;
  const asBytes = (x: unknown): Buffer => Buffer.from(String(x), 'latin1');
  for (const [k, v] of Object.entries(body)) {
    switch (k) {
      case 'ignore_empty':
        break;
      case 'len':
      case 'min_len':
      case 'max_len': {
        const n = Number(v);
        const rule = `${prefix}bytes.${k} = ${n}`;
        checks.push((b, path, emit) => {
          if (k === 'min_len' && b.length < n) emit(path, rule, `must be at least ${plural(n, 'byte')} long`);
          if (k === 'max_len' && b.length > n) emit(path, rule, `must be at most ${plural(n, 'byte')} long, is ${b.length}`);
          if (k === 'len' && b.length !== n) emit(path, rule, `must be exactly ${plural(n, 'byte')} long, is ${b.length}`);
        });
        break;
      }
      case 'const':
      case 'prefix':
      case 'suffix':
      case 'contains': {
        const x = asBytes(v);
        const rule = `${prefix}bytes.${k}`;
        checks.push((b, path, emit) => {
          if (k === 'const' && !b.equals(x)) emit(path, rule, 'does not equal the required bytes');
          if (k === 'prefix' && !b.subarray(0, x.length).equals(x)) emit(path, rule, 'does not start with the required bytes');
          if (k === 'suffix' && !(b.length >= x.length && b.subarray(b.length - x.length).equals(x))) emit(path, rule, 'does not end with the required bytes');
          if (k === 'contains' && b.indexOf(x) < 0) emit(path, rule, 'does not contain the required bytes');
        });
        break;
      }
      case 'in':
      case 'not_in': {
        const l = asList(v).map(asBytes);
        const rule = `${prefix}bytes.${k}`;
        checks.push((b, path, emit) => {
          const found = l.some((x) => x.equals(b));
          if (k === 'in' && !found) emit(path, rule, 'is not one of the allowed values');
          if (k === 'not_in' && found) emit(path, rule, 'is one of the disallowed values');
        });
        break;
      }
      case 'pattern': {
        const re = re2ToJs(String(v));
        if (!re) {
          markUnchecked(`bytes.pattern (untranslatable: ${String(v)})`);
          continue;
        }
        const rule = `${prefix}bytes.pattern = ${String(v)}`;
        checks.push((b, path, emit) => {
          if (!re.test(b.toString('utf8'))) emit(path, rule, `must match the pattern ${String(v)}`);
        });
        break;
      }
      case 'ip':
      case 'ipv4':
      case 'ipv6': {
        if (v !== true) break;
        const rule = `${prefix}bytes.${k}`;
        checks.push((b, path, emit) => {
          const ok = k === 'ip' ? b.length === 4 || b.length === 16 : k === 'ipv4' ? b.length === 4 : b.length === 16;
          if (!ok) emit(path, rule, `must be ${k === 'ip' ? 'a 4- or 16-byte' : k === 'ipv4' ? 'a 4-byte' : 'a 16-byte'} IP address`);
        });
        break;
      }
      default:
        markUnchecked(`bytes.${k}`);
        continue;
    }
    markChecked(`bytes.${k}`);
  }
  if (checks.length === 0) return undefined;
  return (v, path, emit) => {
    const b = Buffer.isBuffer(v) ? v : Buffer.from(v as Uint8Array);
    if (ignoreEmpty && b.length === 0) return;
    for (const c of checks) c(b, path, emit);
  };
}


