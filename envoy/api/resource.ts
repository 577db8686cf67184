import protobuf from 'protobufjs';
import { ResourceInvalidError, type ResourceIssue } from '../../common/errors.js';
import {
  camelToSnake,
  describeJsonType,
  floatingToJson,
  formatDuration,
  formatFloat32,
  formatTimestamp,
  hasLoneSurrogate,
  is64Bit,
  isPlainObject,
  isScalarName,
  joinNanos,
  parseBytes,
  parseDuration,
  parseFloating,
  parseInteger,
  parseTimestamp,
  snakeToCamel,
  splitNanos,
  type ParseResult,
  type ScalarName,
} from './json-wkt.js';
import {
  CHECKED_RULE_KINDS,
  compileFieldRules,
  rawRules,
  UNCHECKED_RULE_KINDS,
  type ElementRules,
  type Emit,
  type FieldRules,
  type RuleTarget,
} from './pgv-rules.js';
import { envoyRoot } from './protos.js';
import { XDS } from './type-urls.js';

/**
 * Pre-push validation and wire encoding of Envoy v3 resources.
 *
 * Resources are plain objects in proto3 JSON form with the protos' snake_case field names, as
 * Envoy's docs write YAML/JSON config: Durations as strings ("5s"), wrapper types as bare values,
 * Struct/Value as plain JSON, enums by name (numbers accepted), 64-bit integers as numbers or
 * decimal strings, bytes as base64, maps as objects, and `google.protobuf.Any` as
 * `{"@type": "type.googleapis.com/<full.name>", ...fields}` (for well-known types with a special
 * JSON form: `{"@type": …, "value": <json>}`).
 *
 * `validateResource` reports every structural problem and every violated protoc-gen-validate rule.
 * It does not check Envoy's semantic, cross-field rules (duplicate virtual-host domains, filter
 * chains that overlap, a DFP cache configured differently in the filter and the cluster, an
 * extension type placed in the wrong slot, …): those are Envoy's and are covered by real-Envoy
 * tests. `xds.type.v3.TypedStruct` is checked only as a TypedStruct; Envoy converts its content.
 *
 * `decodeResource` prints the same form back: fields at their default value omitted (proto3), enums
 * by name, 64-bit integers as decimal strings, Durations/Timestamps with the shortest fraction,
 * float fields with the shortest decimal that reads back as the same float32.
 */

// ---------------------------------------------------------------------------------------------
// Kinds of values

type ElemKind =
  | { k: 'scalar'; t: ScalarName }
  | { k: 'enum'; e: protobuf.Enum; nullValue: boolean }
  | { k: 'message'; t: protobuf.Type }
  | { k: 'wrapper'; t: ScalarName; type: protobuf.Type }
  | { k: 'any'; type: protobuf.Type }
  | { k: 'duration'; type: protobuf.Type }
  | { k: 'timestamp'; type: protobuf.Type }
  | { k: 'struct'; type: protobuf.Type }
  | { k: 'value'; type: protobuf.Type }
  | { k: 'list'; type: protobuf.Type }
  | { k: 'fieldmask'; type: protobuf.Type };

const WRAPPERS: Record<string, ScalarName> = {
  '.google.protobuf.DoubleValue': 'double',
  '.google.protobuf.FloatValue': 'float',
  '.google.protobuf.Int64Value': 'int64',
  '.google.protobuf.UInt64Value': 'uint64',
  '.google.protobuf.Int32Value': 'int32',
  '.google.protobuf.UInt32Value': 'uint32',
  '.google.protobuf.BoolValue': 'bool',
  '.google.protobuf.StringValue': 'string',
  '.google.protobuf.BytesValue': 'bytes',
};

const SPECIAL: Record<string, 'any' | 'duration' | 'timestamp' | 'struct' | 'value' | 'list' | 'fieldmask'> = {
  '.google.protobuf.Any': 'any',
  '.google.protobuf.Duration': 'duration',
  '.google.protobuf.Timestamp': 'timestamp',
  '.google.protobuf.Struct': 'struct',
  '.google.protobuf.Value': 'value',
  '.google.protobuf.ListValue': 'list',
  '.google.protobuf.FieldMask': 'fieldmask',
};

const TYPED_STRUCTS = new Set(['.xds.type.v3.TypedStruct', '.udpa.type.v1.TypedStruct']);

const kindCache = new Map<protobuf.Type, ElemKind>();

function kindOfType(t: protobuf.Type): ElemKind {
  const cached = kindCache.get(t);
  if (cached) return cached;
  const w = WRAPPERS[t.fullName];
  const s = SPECIAL[t.fullName];
  const k: ElemKind = w ? { k: 'wrapper', t: w, type: t } : s ? { k: s, type: t } : { k: 'message', t };
  kindCache.set(t, k);
  return k;
}

function kindOfField(f: protobuf.Field): ElemKind {
  const rt = f.resolvedType;
  if (rt instanceof protobuf.Enum) return { k: 'enum', e: rt, nullValue: rt.fullName === '.google.protobuf.NullValue' };
  if (rt instanceof protobuf.Type) return kindOfType(rt);
  if (isScalarName(f.type)) return { k: 'scalar', t: f.type };
  throw new Error(`unresolved field type ${f.type} of ${f.fullName}`);
}

function ruleTarget(k: ElemKind): RuleTarget {
  switch (k.k) {
    case 'scalar':
    case 'wrapper':
      return { kind: 'scalar', t: k.t };
    case 'enum':
      return { kind: 'enum', e: k.e };
    case 'duration':
    case 'timestamp':
    case 'any':
      return { kind: k.k };
    default:
      return { kind: 'message' };
  }
}

// ---------------------------------------------------------------------------------------------
// Per-type plans (compiled once, cached)

interface FieldPlan {
  name: string;
  /** Declaration order within the message. */
  index: number;
  field: protobuf.Field;
  elem: ElemKind;
  repeated: boolean;
  mapKey?: ScalarName;
  /** Member of a oneof (real or proto3 `optional`): absent means unset, default values count. */
  presence: boolean;
  /** Name of the real oneof this field belongs to. */
  oneof?: string;
  rules?: FieldRules;
  /** `(envoy.annotations.disallowed_by_default)`: Envoy refuses the field unless a runtime flag allows it. */
  disallowed: boolean;
  /** Scalar/enum default checked against the rules when the field is absent. */
  defaultValue?: unknown;
}

interface OneofPlan {
  name: string;
  members: string[];
  required: boolean;
}

interface TypePlan {
  type: protobuf.Type;
  fields: Map<string, FieldPlan>;
  names: string[];
  oneofs: OneofPlan[];
  requiredOneofs: OneofPlan[];
  absentChecks: FieldPlan[];
  typedStruct: boolean;
  /** Message option `(validate.disabled)`: no PGV rules for this message or below it. */
  pgvDisabled: boolean;
}

const planCache = new Map<protobuf.Type, TypePlan>();

function isSynthetic(o: protobuf.OneOf): boolean {
  const only = o.fieldsArray.length === 1 ? o.fieldsArray[0] : undefined;
  return !!only && (only.options?.proto3_optional === true || o.name === `_${only.name}`);
}

function scalarDefault(t: ScalarName): unknown {
  if (t === 'string') return '';
  if (t === 'bool') return false;
  if (t === 'bytes') return Buffer.alloc(0);
  if (is64Bit(t)) return 0n;
  return 0;
}

function planFor(type: protobuf.Type): TypePlan {
  const cached = planCache.get(type);
  if (cached) return cached;
  const fields = new Map<string, FieldPlan>();
  const absentChecks: FieldPlan[] = [];
  for (const f of type.fieldsArray) {
    f.resolve();
    const elem = kindOfField(f);
    const isMap = f instanceof protobuf.MapField;
    const oneof = f.partOf && !isSynthetic(f.partOf) ? f.partOf.name : undefined;
    const fp: FieldPlan = {
      name: f.name,
      index: fields.size,
      field: f,
      elem,
      repeated: f.repeated && !isMap,
      presence: !!f.partOf,
      disallowed: f.options?.['(envoy.annotations.disallowed_by_default)'] === true,
    };
    if (isMap) {
      const kt = (f as protobuf.MapField).keyType;
      if (!isScalarName(kt)) throw new Error(`unexpected map key type ${kt} in ${f.fullName}`);
      fp.mapKey = kt;
    }
    if (oneof) fp.oneof = oneof;
    const raw = rawRules((f as unknown as { parsedOptions?: Record<string, unknown>[] | null }).parsedOptions);
    if (raw) {
      fp.rules = compileFieldRules(raw, {
        repeated: fp.repeated,
        map: isMap,
        target: ruleTarget(elem),
        ...(fp.mapKey ? { keyTarget: { kind: 'scalar', t: fp.mapKey } as RuleTarget } : {}),
      }, f.fullName.slice(1));
    }
    if (!fp.presence && !fp.repeated && !isMap && (elem.k === 'scalar' || elem.k === 'enum')) {
      fp.defaultValue = elem.k === 'enum' ? 0 : scalarDefault(elem.t);
    }
    const r = fp.rules;
    if (r && !fp.presence) {
      const needs =
        (r.element && (r.element.required || (fp.defaultValue !== undefined && r.element.check))) ||
        r.repeated?.check ||
        r.map?.check;
      if (needs) absentChecks.push(fp);
    }
    fields.set(f.name, fp);
  }
  const oneofs: OneofPlan[] = type.oneofsArray
    .filter((o) => !isSynthetic(o))
    .map((o) => ({
      name: o.name,
      members: o.fieldsArray.map((f) => f.name),
      required:
        o.options?.['(validate.required)'] === true ||
        !!(o as unknown as { parsedOptions?: Record<string, unknown>[] | null }).parsedOptions?.some((p) => p['(validate.required)'] === true),
    }));
  const plan: TypePlan = {
    type,
    fields,
    names: [...fields.keys()],
    oneofs,
    requiredOneofs: oneofs.filter((o) => o.required),
    absentChecks,
    typedStruct: TYPED_STRUCTS.has(type.fullName),
    pgvDisabled: type.options?.['(validate.disabled)'] === true || type.options?.['(validate.ignored)'] === true,
  };
  planCache.set(type, plan);
  return plan;
}

const typeByName = new Map<string, protobuf.Type | null>();

/** A message type of the loaded root by full name (no leading dot), or undefined. */
function messageType(fullName: string): protobuf.Type | undefined {
  let t = typeByName.get(fullName);
  if (t === undefined) {
    let found: protobuf.ReflectionObject | null = null;
    try {
      found = fullName === '' ? null : envoyRoot().lookup(fullName.startsWith('.') ? fullName : `.${fullName}`);
    } catch {
      found = null;
    }
    t = found instanceof protobuf.Type ? found : null;
    typeByName.set(fullName, t);
  }
  return t ?? undefined;
}

function typeNameOfUrl(url: string): string | undefined {
  const slash = url.lastIndexOf('/');
  if (slash < 0) return undefined;
  const name = url.slice(slash + 1);
  return name === '' ? undefined : name;
}

// ---------------------------------------------------------------------------------------------
// Validation

const MAX_DEPTH = 100;
/**
 * Envoy checks every Duration of a config, whatever the field (its own rule, beyond PGV): negative
 * values and seconds above INT64_MAX / 10^9 - 1 = 9223372035 are refused.
 */
const ENVOY_MAX_DURATION_NANOS = 9_223_372_036n * 1_000_000_000n;
const INVALID: unique symbol = Symbol('invalid');
type Parsed = unknown | typeof INVALID;

interface Ctx {
  emit: Emit;
  /** False below a `message.skip`: structure is still checked, PGV rules are not. */
  pgv: boolean;
}

function join(path: string, name: string): string {
  return path === '' ? name : `${path}.${name}`;
}

function mapKeyPath(path: string, key: string): string {
  return `${path}[${JSON.stringify(key)}]`;
}

function acceptsNull(fp: FieldPlan): boolean {
  return !fp.repeated && !fp.mapKey && (fp.elem.k === 'value' || (fp.elem.k === 'enum' && fp.elem.nullValue));
}

function editDistance(a: string, b: string, max: number): number {
  if (Math.abs(a.length - b.length) > max) return max + 1;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let best = i;
    for (let j = 1; j <= b.length; j++) {
      const v = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      cur.push(v);
      if (v < best) best = v;
    }
    if (best > max) return max + 1;
    prev = cur;
  }
  return prev[b.length]!;
}

/** The closest candidate to `word`, if it is close enough to be a likely typo. */
export function suggest(word: string, candidates: readonly string[]): string | undefined {
  const snake = camelToSnake(word);
  if (snake !== word && candidates.includes(snake)) return snake;
  const lower = word.toLowerCase();
  const ci = candidates.find((c) => c.toLowerCase() === lower);
  if (ci) return ci;
  const max = Math.min(3, Math.max(1, Math.floor(word.length / 3)));
  let best: string | undefined;
  let bestD = max + 1;
  for (const c of candidates) {
    const d = editDistance(lower, c.toLowerCase(), max);
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

function typeError(ctx: Ctx, path: string, expected: string, v: unknown): void {
  ctx.emit(path, 'type', `expected ${expected}, got ${describeJsonType(v)}`);
}

function parseScalar(t: ScalarName, v: unknown): ParseResult<unknown> {
  switch (t) {
    case 'double':
    case 'float':
      return parseFloating(t, v);
    case 'bool':
      return typeof v === 'boolean' ? { ok: true, value: v } : { ok: false, error: `expected a boolean, got ${describeJsonType(v)}` };
    case 'string':
      if (typeof v !== 'string') return { ok: false, error: `expected a string, got ${describeJsonType(v)}` };
      if (hasLoneSurrogate(v)) return { ok: false, error: 'contains an unpaired UTF-16 surrogate: not valid UTF-8' };
      return { ok: true, value: v };
    case 'bytes':
      return parseBytes(v);
    default:
      return parseInteger(t, v);
  }
}

function parseEnum(ctx: Ctx, e: protobuf.Enum, v: unknown, path: string): Parsed {
  if (typeof v === 'string') {
    const id = e.values[v];
    if (id === undefined) {
      const names = Object.keys(e.values);
      const s = suggest(v, names);
      const hint = s ? ` (did you mean '${s}'?)` : names.length <= 12 ? ` (expected one of ${names.join(', ')})` : '';
      ctx.emit(path, 'enum.name', `unknown value '${v}' for enum ${e.fullName.slice(1)}${hint}`);
      return INVALID;
    }
    if (e.valuesOptions?.[v]?.['(envoy.annotations.disallowed_by_default_enum)'] === true) {
      ctx.emit(path, 'envoy.disallowed_by_default', `enum value '${v}' is deprecated and refused by Envoy by default`);
    }
    return id;
  }
  if (typeof v === 'number' && Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31) return v;
  if (v === null && e.fullName === '.google.protobuf.NullValue') return 0;
  typeError(ctx, path, `an enum name of ${e.fullName.slice(1)}`, v);
  return INVALID;
}

function checkJsonValue(ctx: Ctx, v: unknown, path: string, depth: number): boolean {
  if (depth > MAX_DEPTH) {
    ctx.emit(path, 'depth', `nested deeper than ${MAX_DEPTH} levels`);
    return false;
  }
  if (v === null || typeof v === 'boolean') return true;
  if (typeof v === 'string') {
    if (hasLoneSurrogate(v)) {
      ctx.emit(path, 'type', 'contains an unpaired UTF-16 surrogate: not valid UTF-8');
      return false;
    }
    return true;
  }
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) {
      ctx.emit(path, 'type', `${v} cannot be represented in a JSON value`);
      return false;
    }
    return true;
  }
  if (Array.isArray(v)) {
    let ok = true;
    v.forEach((x, i) => {
      if (x === undefined) {
        ctx.emit(`${path}[${i}]`, 'type', 'list items must not be undefined');
        ok = false;
      } else ok = checkJsonValue(ctx, x, `${path}[${i}]`, depth + 1) && ok;
    });
    return ok;
  }
  if (isPlainObject(v)) return checkJsonObject(ctx, v, path, depth);
  typeError(ctx, path, 'a JSON value', v);
  return false;
}

function checkJsonObject(ctx: Ctx, v: Record<string, unknown>, path: string, depth: number): boolean {
  let ok = true;
  for (const key of Object.keys(v)) {
    const x = v[key];
    if (x === undefined) continue;
    ok = checkJsonValue(ctx, x, mapKeyPath(path, key), depth + 1) && ok;
  }
  return ok;
}

/** Validates one value of the given kind; returns the parsed value the PGV rules check. */
function validateElement(ctx: Ctx, kind: ElemKind, v: unknown, path: string, depth: number, rules: ElementRules | undefined): Parsed {
  let parsed: Parsed = INVALID;
  switch (kind.k) {
    case 'scalar':
    case 'wrapper': {
      if (kind.k === 'wrapper' && isPlainObject(v)) {
        typeError(ctx, path, `a bare ${kind.t} (${kind.type.name} is written unwrapped in JSON)`, v);
        return INVALID;
      }
      const r = parseScalar(kind.t, v);
      if (r.ok) parsed = r.value;
      else ctx.emit(path, kind.t === 'bytes' && typeof v === 'string' ? 'bytes.base64' : 'type', r.error);
      break;
    }
    case 'enum':
      parsed = parseEnum(ctx, kind.e, v, path);
      break;
    case 'duration': {
      const r = parseDuration(v);
      if (!r.ok) ctx.emit(path, 'duration.format', r.error);
      else if (r.value < 0n) ctx.emit(path, 'envoy.duration_range', `${v as string} is negative: Envoy rejects negative durations in any field`);
      else if (r.value >= ENVOY_MAX_DURATION_NANOS) {
        ctx.emit(path, 'envoy.duration_range', `${v as string} is out of range: Envoy rejects durations of ${ENVOY_MAX_DURATION_NANOS / 1_000_000_000n}s or more`);
      } else parsed = r.value;
      break;
    }
    case 'timestamp': {
      const r = parseTimestamp(v);
      if (r.ok) parsed = r.value;
      else ctx.emit(path, 'timestamp.format', r.error);
      break;
    }
    case 'struct':
      if (!isPlainObject(v)) typeError(ctx, path, 'a JSON object (google.protobuf.Struct)', v);
      else if (checkJsonObject(ctx, v, path, depth + 1)) parsed = v;
      break;
    case 'list':
      if (!Array.isArray(v)) typeError(ctx, path, 'a JSON array (google.protobuf.ListValue)', v);
      else if (checkJsonValue(ctx, v, path, depth + 1)) parsed = v;
      break;
    case 'value':
      if (v === undefined) typeError(ctx, path, 'a JSON value', v);
      else if (checkJsonValue(ctx, v, path, depth + 1)) parsed = v;
      break;
    case 'fieldmask':
      if (typeof v !== 'string') typeError(ctx, path, 'a comma-separated list of field paths (google.protobuf.FieldMask)', v);
      else if (!/^([A-Za-z0-9_.]+(,[A-Za-z0-9_.]+)*)?$/.test(v)) ctx.emit(path, 'field_mask.format', `${JSON.stringify(v)} is not a list of field paths`);
      else parsed = v;
      break;
    case 'any':
      parsed = validateAny(ctx, v, path, depth);
      break;
    case 'message':
      if (rules?.skip && ctx.pgv) validateMessage({ emit: ctx.emit, pgv: false }, planFor(kind.t), v, path, depth + 1, false);
      else validateMessage(ctx, planFor(kind.t), v, path, depth + 1, false);
      parsed = v;
      break;
  }
  if (parsed !== INVALID && ctx.pgv && rules?.check) rules.check(parsed, path, ctx.emit);
  return parsed;
}

function validateAny(ctx: Ctx, v: unknown, path: string, depth: number): Parsed {
  if (!isPlainObject(v)) {
    typeError(ctx, path, 'an object with "@type" (google.protobuf.Any)', v);
    return INVALID;
  }
  const url = v['@type'];
  if (url === undefined) {
    ctx.emit(path, 'any.type_url', `missing '@type': write {"@type": "type.googleapis.com/<message>", ...fields}`);
    return INVALID;
  }
  if (typeof url !== 'string') {
    ctx.emit(path, 'any.type_url', `'@type' must be a string, got ${describeJsonType(url)}`);
    return INVALID;
  }
  const name = typeNameOfUrl(url);
  if (!name) {
    ctx.emit(path, 'any.type_url', `'${url}' is not a type URL (expected type.googleapis.com/<full.message.Name>)`);
    return INVALID;
  }
  const inner = messageType(name);
  if (!inner) {
    ctx.emit(
      path,
      'any.type_url',
      `unknown type '${name}': not a message in the loaded Envoy protos (send newer extensions as xds.type.v3.TypedStruct)`,
    );
    return url;
  }
  const ik = kindOfType(inner);
  if (ik.k === 'message') {
    validateMessage(ctx, planFor(inner), v, path, depth + 1, true);
  } else {
    for (const key of Object.keys(v)) {
      if (key !== '@type' && key !== 'value' && v[key] !== undefined) {
        ctx.emit(join(path, key), 'unknown field', `unknown field '${key}': ${inner.fullName.slice(1)} in an Any is written {"@type": …, "value": …}`);
      }
    }
    if (v.value !== undefined) validateElement(ctx, ik, v.value, join(path, 'value'), depth + 1, undefined);
  }
  return url;
}

function validateMessage(ctx: Ctx, plan: TypePlan, obj: unknown, path: string, depth: number, anyBody: boolean): void {
  if (!isPlainObject(obj)) {
    typeError(ctx, path, `an object (${plan.type.fullName.slice(1)})`, obj);
    return;
  }
  if (depth > MAX_DEPTH) {
    ctx.emit(path, 'depth', `nested deeper than ${MAX_DEPTH} levels`);
    return;
  }
  if (plan.pgvDisabled && ctx.pgv) ctx = { emit: ctx.emit, pgv: false };
  let oneofSeen: Map<string, string> | undefined;
  for (const key of Object.keys(obj)) {
    if (anyBody && key === '@type') continue;
    const v = obj[key];
    if (v === undefined) continue;
    const fp = plan.fields.get(key);
    const fpath = join(path, key);
    if (!fp) {
      const s = suggest(key, plan.names);
      ctx.emit(
        fpath,
        'unknown field',
        s ? `unknown field '${key}' (did you mean '${s}'?)` : `unknown field '${key}' for ${plan.type.fullName.slice(1)}`,
      );
      continue;
    }
    if (v === null && !acceptsNull(fp)) continue;
    if (fp.disallowed) {
      ctx.emit(fpath, 'envoy.disallowed_by_default', `field '${key}' is deprecated and refused by Envoy by default`);
    }
    if (fp.oneof) {
      oneofSeen ??= new Map();
      const other = oneofSeen.get(fp.oneof);
      if (other !== undefined) {
        ctx.emit(fpath, 'oneof', `'${other}' and '${key}' are both set, but oneof '${fp.oneof}' allows only one of ${plan.oneofs.find((o) => o.name === fp.oneof)!.members.join(', ')}`);
      } else oneofSeen.set(fp.oneof, key);
    }
    validateField(ctx, fp, v, fpath, depth);
  }
  if (ctx.pgv) {
    for (const fp of plan.absentChecks) {
      const v = obj[fp.name];
      if (v !== undefined && v !== null) continue;
      checkAbsent(ctx, fp, join(path, fp.name));
    }
  }
  for (const o of plan.requiredOneofs) {
    if (!ctx.pgv) break;
    if (!oneofSeen?.has(o.name)) {
      ctx.emit(path, 'oneof.required', `exactly one of ${o.members.map((m) => `'${m}'`).join(', ')} must be set (oneof '${o.name}')`);
    }
  }
  if (plan.typedStruct) {
    const url = obj.type_url;
    if (typeof url !== 'string' || !typeNameOfUrl(url)) {
      ctx.emit(
        join(path, 'type_url'),
        'typed_struct.type_url',
        'a TypedStruct needs the type URL of the message it carries, e.g. type.googleapis.com/envoy.extensions…',
      );
    }
  }
}

function checkAbsent(ctx: Ctx, fp: FieldPlan, path: string): void {
  const r = fp.rules!;
  if (r.element?.required) ctx.emit(path, r.element.required.rule, r.element.required.message);
  else if (r.element?.check && fp.defaultValue !== undefined) r.element.check(fp.defaultValue, path, ctx.emit);
  r.repeated?.check?.([], 0, path, ctx.emit);
  r.map?.check?.(0, path, ctx.emit);
}

function parseMapKey(t: ScalarName, key: string): ParseResult<unknown> {
  if (t === 'string') return { ok: true, value: key };
  if (t === 'bool') {
    return key === 'true' || key === 'false' ? { ok: true, value: key === 'true' } : { ok: false, error: `map key must be "true" or "false", got ${JSON.stringify(key)}` };
  }
  return parseInteger(t, key);
}

function validateField(ctx: Ctx, fp: FieldPlan, v: unknown, path: string, depth: number): void {
  const rules = ctx.pgv ? fp.rules : undefined;
  if (fp.mapKey) {
    if (!isPlainObject(v)) {
      typeError(ctx, path, 'an object (map)', v);
      return;
    }
    let n = 0;
    for (const key of Object.keys(v)) {
      const val = v[key];
      if (val === undefined) continue;
      n++;
      const kp = mapKeyPath(path, key);
      const pk = parseMapKey(fp.mapKey, key);
      if (!pk.ok) ctx.emit(kp, 'type', pk.error);
      else if (rules?.map?.keys?.check) rules.map.keys.check(pk.value, kp, ctx.emit);
      if (val === null && fp.elem.k !== 'value') {
        ctx.emit(kp, 'type', 'map values must not be null');
        continue;
      }
      validateElement(ctx, fp.elem, val, kp, depth, rules?.map?.values);
    }
    rules?.map?.check?.(n, path, ctx.emit);
    return;
  }
  if (fp.repeated) {
    if (!Array.isArray(v)) {
      typeError(ctx, path, 'an array', v);
      return;
    }
    const itemRules = rules?.repeated?.items;
    const listCheck = rules?.repeated?.check;
    const parsed: unknown[] | undefined = listCheck ? [] : undefined;
    for (let i = 0; i < v.length; i++) {
      const item: unknown = v[i];
      const ip = `${path}[${i}]`;
      if ((item === null || item === undefined) && fp.elem.k !== 'value') {
        ctx.emit(ip, 'type', 'list items must not be null');
        parsed?.push(INVALID);
        continue;
      }
      const p = validateElement(ctx, fp.elem, item, ip, depth, itemRules);
      if (parsed) parsed.push(p);
    }
    if (listCheck) listCheck(parsed!, v.length, path, ctx.emit);
    return;
  }
  const el = rules?.element;
  validateElement(ctx, fp.elem, v, path, depth, el);
}

function issueFactory(typeUrl: string, resource: string, issues: ResourceIssue[]): Emit {
  return (path, rule, message) => {
    issues.push({ typeUrl, resource, path, rule, message });
  };
}

function resourceType(typeUrl: string): protobuf.Type | undefined {
  const name = typeNameOfUrl(typeUrl) ?? typeUrl;
  return messageType(name);
}

/** Name field of each xDS resource type. */
const NAME_FIELD: Record<string, string> = {
  [XDS.cluster]: 'name',
  [XDS.listener]: 'name',
  [XDS.route]: 'name',
  [XDS.secret]: 'name',
  [XDS.endpoint]: 'cluster_name',
};

/** The resource's own name: `name`, or `cluster_name` for a ClusterLoadAssignment. */
export function resourceName(typeUrl: string, json: unknown): string {
  const field = NAME_FIELD[typeUrl] ?? 'name';
  if (!isPlainObject(json)) return '';
  const v = json[field];
  return typeof v === 'string' ? v : '';
}

/**
 * Every problem with `json` as a resource of `typeUrl` named `name`: structure (unknown fields,
 * JSON types, enum names, Duration/Timestamp strings, Any types, oneofs) and protoc-gen-validate
 * rules. An empty list means Envoy's own proto parsing and PGV checks will accept it; Envoy's
 * semantic checks still apply.
 */
export function validateResource(typeUrl: string, name: string, json: unknown): ResourceIssue[] {
  const issues: ResourceIssue[] = [];
  const emit = issueFactory(typeUrl, name, issues);
  const type = resourceType(typeUrl);
  if (!type) {
    emit('', 'any.type_url', `unknown resource type '${typeUrl}': not a message in the loaded Envoy protos`);
    return issues;
  }
  const ctx: Ctx = { emit, pgv: true };
  let body = json;
  if (isPlainObject(json) && json['@type'] !== undefined) {
    if (json['@type'] !== typeUrl) emit('@type', 'any.type_url', `'@type' is ${JSON.stringify(json['@type'])} but the resource is pushed as ${typeUrl}`);
    body = { ...json };
    delete (body as Record<string, unknown>)['@type'];
  }
  const kind = kindOfType(type);
  if (kind.k === 'message') validateMessage(ctx, planFor(type), body, '', 0, false);
  else validateElement(ctx, kind, body, '', 0, undefined);
  const nameField = NAME_FIELD[typeUrl];
  if (nameField && name !== '' && isPlainObject(body)) {
    const own = body[nameField];
    if (own !== name) {
      emit(nameField, 'resource.name', `the resource is pushed as '${name}' but its ${nameField} is ${own === undefined ? 'not set' : JSON.stringify(own)}`);
    }
  }
  return issues;
}

// ---------------------------------------------------------------------------------------------
// Encoding: proto3 JSON → protobufjs fromObject form → wire bytes

function scalarToPb(t: ScalarName, v: unknown): unknown {
  switch (t) {
    case 'double':
    case 'float': {
      const r = parseFloating(t, v);
      return r.ok ? r.value : v;
    }
    case 'bytes': {
      const r = parseBytes(v);
      return r.ok ? Buffer.from(r.value) : v;
    }
    case 'bool':
    case 'string':
      return v;
    default:
      if (is64Bit(t)) return typeof v === 'bigint' ? v.toString() : String(v);
      return typeof v === 'string' ? Number(v) : v;
  }
}

function isDefaultPb(kind: ElemKind, pb: unknown): boolean {
  if (kind.k === 'enum') return pb === 0;
  if (kind.k !== 'scalar' && kind.k !== 'wrapper') return false;
  const t = kind.t;
  if (t === 'string') return pb === '';
  if (t === 'bool') return pb === false;
  if (t === 'bytes') return (pb as Uint8Array).length === 0;
  if (is64Bit(t)) return pb === '0' || pb === '-0';
  return pb === 0 && !Object.is(pb, -0);
}

function fieldName(type: protobuf.Type, id: number): string {
  const f = type.fieldsById[id];
  if (!f) throw new Error(`${type.fullName} has no field ${id}`);
  return f.name;
}

function valueToPb(type: protobuf.Type, v: unknown): Record<string, unknown> {
  // google.protobuf.Value: 1 null_value, 2 number_value, 3 string_value, 4 bool_value, 5 struct_value, 6 list_value
  if (v === null) return { [fieldName(type, 1)]: 0 };
  if (typeof v === 'number') return { [fieldName(type, 2)]: v };
  if (typeof v === 'string') return { [fieldName(type, 3)]: v };
  if (typeof v === 'boolean') return { [fieldName(type, 4)]: v };
  const structType = type.fieldsById[5]!.resolvedType as protobuf.Type;
  const listType = type.fieldsById[6]!.resolvedType as protobuf.Type;
  if (Array.isArray(v)) return { [fieldName(type, 6)]: listToPb(listType, v) };
  return { [fieldName(type, 5)]: structToPb(structType, v as Record<string, unknown>) };
}

function structToPb(type: protobuf.Type, v: Record<string, unknown>): Record<string, unknown> {
  const valueType = type.fieldsById[1]!.resolvedType as protobuf.Type;
  const fields: Record<string, unknown> = {};
  for (const k of Object.keys(v)) if (v[k] !== undefined) fields[k] = valueToPb(valueType, v[k]);
  return { [fieldName(type, 1)]: fields };
}

function listToPb(type: protobuf.Type, v: unknown[]): Record<string, unknown> {
  const valueType = type.fieldsById[1]!.resolvedType as protobuf.Type;
  return { [fieldName(type, 1)]: v.map((x) => valueToPb(valueType, x)) };
}

function timeToPb(type: protobuf.Type, total: bigint): Record<string, unknown> {
  const { seconds, nanos } = splitNanos(total);
  const out: Record<string, unknown> = {};
  if (seconds !== 0n) out[fieldName(type, 1)] = seconds.toString();
  if (nanos !== 0) out[fieldName(type, 2)] = nanos;
  return out;
}

function elemToPb(kind: ElemKind, v: unknown): unknown {
  switch (kind.k) {
    case 'scalar':
      return scalarToPb(kind.t, v);
    case 'enum':
      if (typeof v === 'string') return kind.e.values[v];
      return v === null ? 0 : v;
    case 'wrapper': {
      const inner = scalarToPb(kind.t, v);
      return isDefaultPb(kind, inner) ? {} : { [fieldName(kind.type, 1)]: inner };
    }
    case 'duration': {
      const r = parseDuration(v);
      if (!r.ok) throw new Error(r.error);
      return timeToPb(kind.type, r.value);
    }
    case 'timestamp': {
      const r = parseTimestamp(v);
      if (!r.ok) throw new Error(r.error);
      return timeToPb(kind.type, r.value);
    }
    case 'struct':
      return structToPb(kind.type, v as Record<string, unknown>);
    case 'value':
      return valueToPb(kind.type, v);
    case 'list':
      return listToPb(kind.type, v as unknown[]);
    case 'fieldmask': {
      const s = v as string;
      return { [fieldName(kind.type, 1)]: s === '' ? [] : s.split(',').map(camelToSnake) };
    }
    case 'any':
      return anyToPb(v as Record<string, unknown>);
    case 'message':
      return messageToPb(planFor(kind.t), v as Record<string, unknown>, false);
  }
}

function anyToPb(v: Record<string, unknown>): Record<string, unknown> {
  const url = v['@type'] as string;
  const inner = messageType(typeNameOfUrl(url)!)!;
  return { type_url: url, value: encodeMessage(inner, v, true) };
}

function encodeMessage(type: protobuf.Type, v: unknown, anyBody: boolean): Uint8Array {
  const kind = kindOfType(type);
  let pb: unknown;
  if (kind.k === 'message') pb = messageToPb(planFor(type), v as Record<string, unknown>, anyBody);
  else {
    const inner = anyBody ? (v as Record<string, unknown>).value : v;
    pb = inner === undefined ? {} : elemToPb(kind, inner);
  }
  return type.encode(type.fromObject(pb as Record<string, unknown>)).finish();
}

function messageToPb(plan: TypePlan, obj: Record<string, unknown>, anyBody: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(obj)) {
    if (anyBody && key === '@type') continue;
    const v = obj[key];
    if (v === undefined) continue;
    const fp = plan.fields.get(key);
    if (!fp) throw new Error(`unknown field ${key}`);
    if (v === null && !acceptsNull(fp)) continue;
    if (fp.mapKey) {
      const src = v as Record<string, unknown>;
      const m: Record<string, unknown> = {};
      let n = 0;
      for (const k of Object.keys(src)) {
        if (src[k] === undefined) continue;
        m[k] = elemToPb(fp.elem, src[k]);
        n++;
      }
      if (n > 0) out[key] = m;
    } else if (fp.repeated) {
      const a = v as unknown[];
      if (a.length > 0) out[key] = a.map((x) => elemToPb(fp.elem, x));
    } else {
      const pb = elemToPb(fp.elem, v);
      if (!fp.presence && isDefaultPb(fp.elem.k === 'wrapper' ? { k: 'message', t: fp.elem.type } : fp.elem, pb)) continue;
      out[key] = pb;
    }
  }
  return out;
}

/**
 * Validates (throwing `ResourceInvalidError` with every issue) and returns the protobuf wire
 * encoding of the resource.
 */
export function encodeResource(typeUrl: string, name: string, json: unknown): Buffer {
  const issues = validateResource(typeUrl, name, json);
  if (issues.length > 0) throw new ResourceInvalidError(issues);
  const type = resourceType(typeUrl)!;
  let body = json;
  if (isPlainObject(json) && json['@type'] !== undefined) {
    body = { ...json };
    delete (body as Record<string, unknown>)['@type'];
  }
  const bytes = encodeMessage(type, body, false);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** `encodeResource`, wrapped as the `google.protobuf.Any` an xDS response carries. */
export function encodeResourceAny(typeUrl: string, name: string, json: unknown): { type_url: string; value: Buffer } {
  return { type_url: typeUrl, value: encodeResource(typeUrl, name, json) };
}

// ---------------------------------------------------------------------------------------------
// Decoding: wire bytes → proto3 JSON (snake_case)

type Msg = Record<string, unknown>;

function longToString(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'string') return String(v);
  return (v as { toString(): string }).toString();
}

function scalarToJson(t: ScalarName, v: unknown): unknown {
  switch (t) {
    case 'double':
      return floatingToJson(v as number);
    case 'float':
      return floatingToJson(formatFloat32(v as number));
    case 'bytes':
      return Buffer.from(v as Uint8Array).toString('base64');
    case 'bool':
    case 'string':
      return v;
    default:
      return is64Bit(t) ? longToString(v) : v;
  }
}

function isDefaultDecoded(kind: ElemKind, v: unknown): boolean {
  if (kind.k === 'enum') return v === 0;
  if (kind.k !== 'scalar') return false;
  const t = kind.t;
  if (t === 'string') return v === '';
  if (t === 'bool') return v === false;
  if (t === 'bytes') return (v as Uint8Array).length === 0;
  if (is64Bit(t)) return longToString(v) === '0';
  return v === 0 && !Object.is(v, -0);
}

function has(m: Msg, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(m, k) && m[k] !== null && m[k] !== undefined;
}

function timeFromMsg(type: protobuf.Type, m: Msg): bigint {
  const s = m[fieldName(type, 1)];
  const n = m[fieldName(type, 2)];
  return joinNanos(s === undefined || s === null ? 0n : BigInt(longToString(s)), typeof n === 'number' ? n : 0);
}

function valueToJson(type: protobuf.Type, m: Msg): unknown {
  if (has(m, fieldName(type, 2))) return m[fieldName(type, 2)];
  if (has(m, fieldName(type, 3))) return m[fieldName(type, 3)];
  if (has(m, fieldName(type, 4))) return m[fieldName(type, 4)];
  if (has(m, fieldName(type, 5))) return structToJson(type.fieldsById[5]!.resolvedType as protobuf.Type, m[fieldName(type, 5)] as Msg);
  if (has(m, fieldName(type, 6))) return listToJson(type.fieldsById[6]!.resolvedType as protobuf.Type, m[fieldName(type, 6)] as Msg);
  return null;
}

function structToJson(type: protobuf.Type, m: Msg): Record<string, unknown> {
  const valueType = type.fieldsById[1]!.resolvedType as protobuf.Type;
  const fields = (m[fieldName(type, 1)] ?? {}) as Record<string, Msg>;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(fields)) out[k] = valueToJson(valueType, fields[k]!);
  return out;
}

function listToJson(type: protobuf.Type, m: Msg): unknown[] {
  const valueType = type.fieldsById[1]!.resolvedType as protobuf.Type;
  const values = (m[fieldName(type, 1)] ?? []) as Msg[];
  return values.map((x) => valueToJson(valueType, x));
}

function elemToJson(kind: ElemKind, v: unknown): unknown {
  switch (kind.k) {
    case 'scalar':
      return scalarToJson(kind.t, v);
    case 'enum':
      if (kind.nullValue) return null;
      return kind.e.valuesById[v as number] ?? v;
    case 'wrapper': {
      const inner = (v as Msg)[fieldName(kind.type, 1)];
      return scalarToJson(kind.t, inner === undefined || inner === null ? defaultRaw(kind.t) : inner);
    }
    case 'duration':
      return formatDuration(timeFromMsg(kind.type, v as Msg));
    case 'timestamp':
      return formatTimestamp(timeFromMsg(kind.type, v as Msg));
    case 'struct':
      return structToJson(kind.type, v as Msg);
    case 'value':
      return valueToJson(kind.type, v as Msg);
    case 'list':
      return listToJson(kind.type, v as Msg);
    case 'fieldmask':
      return ((v as Msg)[fieldName(kind.type, 1)] as string[]).map(snakeToCamel).join(',');
    case 'any':
      return anyToJson(v as Msg);
    case 'message':
      return messageToJson(planFor(kind.t), v as Msg);
  }
}

function defaultRaw(t: ScalarName): unknown {
  if (t === 'bytes') return new Uint8Array(0);
  if (is64Bit(t)) return 0;
  return scalarDefault(t);
}

function anyToJson(m: Msg): Record<string, unknown> {
  const url = (m.type_url as string | undefined) ?? '';
  const bytes = (m.value as Uint8Array | undefined) ?? new Uint8Array(0);
  const name = typeNameOfUrl(url);
  const inner = name ? messageType(name) : undefined;
  if (!inner) return { '@type': url, '@value_base64': Buffer.from(bytes).toString('base64') };
  const decoded = inner.decode(bytes) as unknown as Msg;
  const kind = kindOfType(inner);
  if (kind.k === 'message') return { '@type': url, ...messageToJson(planFor(inner), decoded) };
  return { '@type': url, value: elemToJson(kind, decoded) };
}

function mapKeyToJson(t: ScalarName, k: string): string {
  if (is64Bit(t) && k.length === 8 && !/^-?\d+$/.test(k)) {
    return protobuf.util.longFromHash(k, t === 'uint64' || t === 'fixed64').toString();
  }
  return k;
}

function messageToJson(plan: TypePlan, m: Msg): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  // Decoded messages carry only the fields seen on the wire (plus empty lists and maps) as own
  // properties: visit those, in declaration order.
  const present: FieldPlan[] = [];
  for (const key of Object.keys(m)) {
    const fp = plan.fields.get(key);
    if (fp) present.push(fp);
  }
  if (present.length > 1) present.sort((a, b) => a.index - b.index);
  for (const fp of present) {
    const v = m[fp.name];
    if (fp.mapKey) {
      const src = v as Record<string, unknown> | undefined;
      if (!src) continue;
      const keys = Object.keys(src);
      if (keys.length === 0) continue;
      const o: Record<string, unknown> = {};
      for (const k of keys) o[mapKeyToJson(fp.mapKey, k)] = elemToJson(fp.elem, src[k]);
      out[fp.name] = o;
    } else if (fp.repeated) {
      const a = v as unknown[] | undefined;
      if (a && a.length > 0) out[fp.name] = a.map((x) => elemToJson(fp.elem, x));
    } else {
      if (!has(m, fp.name)) continue;
      if (!fp.presence && isDefaultDecoded(fp.elem, v)) continue;
      out[fp.name] = elemToJson(fp.elem, v);
    }
  }
  return out;
}

/** Wire bytes of a `typeUrl` message → the proto3 JSON form `validateResource` reads. */
export function decodeResource(typeUrl: string, bytes: Uint8Array): unknown {
  const type = resourceType(typeUrl);
  if (!type) throw new ResourceInvalidError([{ typeUrl, resource: '', path: '', rule: 'any.type_url', message: `unknown resource type '${typeUrl}'` }]);
  const decoded = type.decode(bytes) as unknown as Msg;
  const kind = kindOfType(type);
  return kind.k === 'message' ? messageToJson(planFor(type), decoded) : elemToJson(kind, decoded);
}

// ---------------------------------------------------------------------------------------------
// Rule coverage

/** Compiles the plan of every message type in the root, so the rule-kind sets are complete. */
export function compileAllPlans(): number {
  let n = 0;
  const visit = (ns: protobuf.NamespaceBase): void => {
    for (const o of ns.nestedArray) {
      if (o instanceof protobuf.Type) {
        planFor(o);
        n++;
      }
      if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) visit(o);
    }
  };
  visit(envoyRoot());
  return n;
}

/** Which PGV rule kinds the loaded protos use, split into checked and seen-but-unchecked. */
export function ruleKindReport(): { checked: string[]; unchecked: { kind: string; field: string }[] } {
  compileAllPlans();
  return {
    checked: [...CHECKED_RULE_KINDS].sort(),
    unchecked: [...UNCHECKED_RULE_KINDS].map(([kind, field]) => ({ kind, field })).sort((a, b) => a.kind.localeCompare(b.kind)),
  };
}

export { CHECKED_RULE_KINDS, UNCHECKED_RULE_KINDS };
