import fs from 'node:fs/promises';
import path from 'node:path';
import {
  Composer,
  CST,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  Parser,
  visit,
  type Document,
  type Node as YamlNode,
} from 'yaml';
import type { z } from 'zod';
import { PolicyError, sortIssues, type PolicyIssue } from './errors.js';
import { didYouMean, partialPolicyIssues, PolicySchema, policyIssues, type Policy, type SchemaIssue } from './schema.js';

/**
 * YAML → validated model, with every problem reported at once and located (`file:line:col`, path,
 * hint). Refused before parsing: files over 1 MiB, non-UTF-8 or binary content. Refused from the
 * parser's tokens, before composing: nesting deeper than MAX_DEPTH, tags beyond the core schema,
 * directives, non-scalar keys, more than MAX_ALIASES aliases. Refused while composing: syntax errors,
 * duplicate keys, multiple documents, merge keys (`<<`), an alias expansion beyond yaml's budget.
 */

export const MAX_POLICY_BYTES = 1024 * 1024;
/** Alias nodes a document may contain. Anchors are handy for reuse; expansion bombs are not. */
export const MAX_ALIASES = 32;
/** yaml's expansion budget (alias count weighted by the aliased node's own aliases). */
const MAX_ALIAS_EXPANSION = 64;
/**
 * Collections nested deeper than this are refused from the parser's tokens, before the document is
 * composed: the yaml composer recurses per level, and deep enough nesting (a few KB of `- - - …` or
 * `[[[…`) exhausts the stack, which V8 can turn into a fatal abort instead of an exception. A policy
 * needs about six levels.
 */
export const MAX_DEPTH = 64;

const COMPOSE_OPTIONS = {
  prettyErrors: false,
  uniqueKeys: true,
  strict: true,
  version: '1.2',
  schema: 'core',
  merge: false,
} as const;

export type PathSeg = string | number;

export interface Location {
  line: number;
  col: number;
}

export interface ParsedYaml<T> {
  value: T;
  /** display name used in issues */
  file: string;
  /** line:col of the node at `path` (or of the nearest ancestor that exists) */
  locate(path: readonly PathSeg[]): Location;
  /** 1-based line of the node at `path`, or undefined when the document does not contain it */
  lineOf(path: readonly PathSeg[]): number | undefined;
}

export interface LoadedPolicy extends ParsedYaml<Policy> {
  policy: Policy;
  /** directory that relative paths in the policy are resolved against */
  baseDir: string;
}

export interface ParseOptions {
  /** display name for issues (the path as the user wrote it) */
  file: string;
}

const CORE_TAGS = new Set([
  'tag:yaml.org,2002:str',
  'tag:yaml.org,2002:int',
  'tag:yaml.org,2002:float',
  'tag:yaml.org,2002:bool',
  'tag:yaml.org,2002:null',
  'tag:yaml.org,2002:map',
  'tag:yaml.org,2002:seq',
]);

export function pathText(p: readonly PropertyKey[]): string {
  let s = '';
  for (const seg of p) {
    if (typeof seg === 'number') s += `[${seg}]`;
    else s += s ? `.${String(seg)}` : String(seg);
  }
  return s;
}

function wholeFileIssue(file: string, code: string, message: string, hint?: string): PolicyIssue {
  return hint === undefined ? { file, line: 1, col: 1, path: '', message, code } : { file, line: 1, col: 1, path: '', message, code, hint };
}

/** Decode bytes as UTF-8 text, refusing oversize, non-UTF-8 and binary input. */
export function decodePolicyBytes(input: string | Uint8Array, file: string): string {
  const size = typeof input === 'string' ? Buffer.byteLength(input, 'utf8') : input.byteLength;
  if (size > MAX_POLICY_BYTES) {
    throw new PolicyError('policy_too_large', [
      wholeFileIssue(file, 'too_large', `file is ${size} bytes; the limit is ${MAX_POLICY_BYTES} bytes (1 MiB)`, 'split generated rules or use wildcards'),
    ]);
  }
  let text: string;
  if (typeof input === 'string') {
    text = input;
  } else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(input);
    } catch {
      throw new PolicyError('policy_invalid', [wholeFileIssue(file, 'binary', 'file is not UTF-8 text')]);
    }
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const bad = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]/.exec(text);
  if (bad) {
    const lc = lineCol(text, bad.index);
    throw new PolicyError('policy_invalid', [
      { file, ...lc, path: '', code: 'binary', message: `binary content: control character U+${bad[0].charCodeAt(0).toString(16).padStart(4, '0').toUpperCase()}` },
    ]);
  }
  return text;
}

function lineCol(text: string, offset: number): Location {
  let line = 1;
  let last = -1;
  for (let i = 0; i < offset; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      last = i;
    }
  }
  return { line, col: offset - last };
}

// ---------------------------------------------------------------------------------------------
// Locating paths in the YAML tree

interface Found {
  /** the value node at the path, when it exists */
  node?: YamlNode | null;
  /** the key node of the last map step, when it exists */
  key?: YamlNode;
  /** deepest existing node on the way */
  deepest: YamlNode | null;
  /** how many segments were resolved */
  depth: number;
}

function resolveAlias(doc: Document, n: unknown): unknown {
  let cur = n;
  for (let i = 0; i < 8 && isAlias(cur); i++) cur = cur.resolve(doc);
  return cur;
}

function findPath(doc: Document, p: readonly PathSeg[]): Found {
  let node = resolveAlias(doc, doc.contents) as YamlNode | null;
  let key: YamlNode | undefined;
  let depth = 0;
  let deepest: YamlNode | null = node;
  for (const seg of p) {
    if (isMap(node)) {
      const pair = node.items.find((it) => {
        const k = it.key;
        return isScalar(k) ? String(k.value) === String(seg) : false;
      });
      if (!pair) break;
      key = pair.key as YamlNode;
      node = resolveAlias(doc, pair.value) as YamlNode | null;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg];
      if (item === undefined) break;
      key = undefined;
      node = resolveAlias(doc, item) as YamlNode | null;
    } else {
      break;
    }
    depth++;
    deepest = node ?? (key as YamlNode | undefined) ?? deepest;
  }
  return depth === p.length ? { node, key, deepest, depth } : { deepest, depth };
}

function nodeStart(n: YamlNode | null | undefined): number | undefined {
  return n?.range ? n.range[0] : undefined;
}

function isEmptyScalar(n: YamlNode | null | undefined): boolean {
  return !n || (isScalar(n) && n.value === null && !!n.range && n.range[0] === n.range[1]);
}

/** Offset of the value at `p`, or of the key when the value is empty, or of the nearest ancestor. */
function offsetOf(doc: Document, p: readonly PathSeg[], preferKey = false): number {
  const f = findPath(doc, p);
  if (f.depth === p.length) {
    if (preferKey && f.key) return nodeStart(f.key) ?? 0;
    if (isEmptyScalar(f.node) && f.key) return nodeStart(f.key) ?? 0;
    return nodeStart(f.node) ?? nodeStart(f.key) ?? 0;
  }
  return nodeStart(f.deepest) ?? 0;
}

/** Path of the map key whose source range covers `offset` (for parser errors such as duplicate keys). */
function pathAtOffset(doc: Document, offset: number): PathSeg[] {
  const out: PathSeg[] = [];
  let node: unknown = doc.contents;
  for (let guard = 0; guard < 1000; guard++) {
    if (isMap(node)) {
      let next: unknown;
      for (const pair of node.items) {
        const k = pair.key as YamlNode | null;
        const v = pair.value as YamlNode | null;
        if (k?.range && offset >= k.range[0] && offset < Math.max(k.range[1], k.range[0] + 1)) {
          out.push(isScalar(k) ? String(k.value) : '?');
          return out;
        }
        if (v?.range && offset >= v.range[0] && offset < v.range[2]) {
          out.push(isScalar(k) ? String(k.value) : '?');
          next = v;
          break;
        }
      }
      if (next === undefined) return out;
      node = next;
    } else if (isSeq(node)) {
      const idx = node.items.findIndex((it) => {
        const r = (it as YamlNode | null)?.range;
        return !!r && offset >= r[0] && offset < r[2];
      });
      if (idx < 0) return out;
      out.push(idx);
      node = node.items[idx];
    } else {
      return out;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// zod issues → located issues

type ZodIssue = z.core.$ZodIssue;

function typeName(v: unknown): string {
  if (v === null) return 'null (an empty value)';
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'number') return Number.isFinite(v) ? `the number ${v}` : 'an infinite number';
  if (typeof v === 'string') return `the string '${v.length > 40 ? `${v.slice(0, 40)}…` : v}'`;
  if (typeof v === 'boolean') return `the boolean ${v}`;
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

const EXPECTED_NAMES: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'a whole number',
  boolean: 'true or false',
  object: 'a mapping (key: value)',
  array: 'a list',
  literal: 'a fixed value',
};

/** Per-parse messages for issues the schema does not word itself. */
const errorMap = (iss: z.core.$ZodRawIssue): string | undefined => {
  switch (iss.code) {
    case 'invalid_type':
      return `expected ${EXPECTED_NAMES[iss.expected] ?? iss.expected}, got ${typeName(iss.input)}`;
    case 'too_small': {
      const min = Number(iss.minimum);
      if (iss.origin === 'array') return min === 1 ? 'must not be empty' : `must have at least ${min} items`;
      if (iss.origin === 'string') return min === 1 ? 'must not be empty' : `must be at least ${min} characters`;
      return `must be ${iss.inclusive === false ? 'greater than' : 'at least'} ${min}`;
    }
    case 'too_big': {
      const max = Number(iss.maximum);
      if (iss.origin === 'array') return `must have at most ${max} items`;
      if (iss.origin === 'string') return `must be at most ${max} characters`;
      return `must be ${iss.inclusive === false ? 'less than' : 'at most'} ${max}`;
    }
    case 'invalid_value':
      return iss.values.length === 1
        ? `expected \`${String(iss.values[0])}\`, got ${typeName(iss.input)}`
        : `expected one of ${iss.values.map((v) => `\`${String(v)}\``).join(', ')}, got ${typeName(iss.input)}`;
    case 'invalid_format':
      return `invalid format`;
    default:
      return undefined;
  }
};

interface ZodDefLike {
  type: string;
  innerType?: unknown;
  in?: unknown;
  shape?: Record<string, unknown>;
  element?: unknown;
  options?: unknown[];
}

function defOf(s: unknown): ZodDefLike | undefined {
  return (s as { _zod?: { def?: ZodDefLike } })?._zod?.def;
}

/** Concrete schemas a (possibly wrapped or union) schema stands for. */
function expand(s: unknown, out: unknown[] = [], depth = 0): unknown[] {
  const d = defOf(s);
  if (!d || depth > 20) return out;
  if (d.innerType !== undefined && ['optional', 'default', 'prefault', 'nullable', 'readonly', 'catch', 'nonoptional'].includes(d.type)) {
    return expand(d.innerType, out, depth + 1);
  }
  if (d.type === 'pipe') return expand(d.in, out, depth + 1);
  if (d.type === 'union' && d.options) {
    for (const o of d.options) expand(o, out, depth + 1);
    return out;
  }
  out.push(s);
  return out;
}

/** Keys the schema accepts for the object at `p`. */
export function knownKeysAt(schema: unknown, p: readonly PropertyKey[]): string[] {
  let cur = expand(schema);
  for (const seg of p) {
    const next: unknown[] = [];
    for (const s of cur) {
      const d = defOf(s)!;
      if (d.type === 'object' && typeof seg === 'string' && d.shape && Object.hasOwn(d.shape, seg)) expand(d.shape[seg], next);
      else if (d.type === 'array' && typeof seg === 'number') expand(d.element, next);
    }
    cur = next;
  }
  const keys = new Set<string>();
  for (const s of cur) {
    const d = defOf(s)!;
    if (d.type === 'object' && d.shape) for (const k of Object.keys(d.shape)) keys.add(k);
  }
  return [...keys];
}

function valueAt(root: unknown, p: readonly PropertyKey[]): { exists: boolean; value: unknown; parent: unknown } {
  let cur: unknown = root;
  let parent: unknown = undefined;
  for (const seg of p) {
    parent = cur;
    if (cur !== null && typeof cur === 'object' && Object.hasOwn(cur, seg as string)) cur = (cur as Record<PropertyKey, unknown>)[seg as string];
    else return { exists: false, value: undefined, parent };
  }
  return { exists: true, value: cur, parent };
}

interface Draft {
  path: PathSeg[];
  code: string;
  message: string;
  hint?: string;
  /** locate at the key rather than the value */
  atKey?: boolean;
}

function fromSchemaIssue(s: SchemaIssue): Draft {
  return { path: s.path, code: s.code, message: s.message, ...(s.hint ? { hint: s.hint } : {}) };
}

function toSegs(p: readonly PropertyKey[]): PathSeg[] {
  return p.map((s) => (typeof s === 'number' ? s : String(s)));
}

/** Pick the union branch that went deepest; fall back to the union's own message. */
function unionDrafts(iss: Extract<ZodIssue, { code: 'invalid_union' }>, base: PathSeg[], schema: unknown, root: unknown): Draft[] {
  const note = (iss as { note?: string }).note;
  const options = (iss as { options?: unknown[] }).options;
  if (note === 'No matching discriminator' && Array.isArray(options)) {
    const got = valueAt(root, base).value;
    const dym = typeof got === 'string' ? didYouMean(got, options.map(String)) : undefined;
    return [{
      path: base,
      code: 'invalid_value',
      message: got === undefined ? `missing required key \`${String(base[base.length - 1])}\`` : `expected one of ${options.map((o) => `\`${String(o)}\``).join(', ')}, got ${typeName(got)}`,
      ...(dym ? { hint: `did you mean \`${dym}\`?` } : {}),
    }];
  }
  let best: ZodIssue[] | undefined;
  let bestScore = Infinity;
  for (const branch of iss.errors) {
    const rootMismatch = branch.filter((b) => b.path.length === 0 && (b.code === 'invalid_type' || b.code === 'invalid_value')).length;
    const score = rootMismatch * 1000 + branch.length;
    if (score < bestScore) {
      bestScore = score;
      best = branch;
    }
  }
  if (!best || bestScore >= 1000) {
    return [{ path: base, code: 'wrong_type', message: iss.message }];
  }
  return best.flatMap((b) => issueDrafts({ ...b, path: [...base, ...b.path] } as ZodIssue, schema, root));
}

function issueDrafts(iss: ZodIssue, schema: unknown, root: unknown): Draft[] {
  const p = toSegs(iss.path);
  switch (iss.code) {
    case 'unrecognized_keys': {
      const known = knownKeysAt(schema, iss.path);
      return iss.keys.map((k) => {
        if (k === '<<') return { path: [...p, k], code: 'yaml_merge_key', message: 'YAML merge keys (<<) are not supported', hint: 'write the keys out; anchors and aliases of whole values are allowed', atKey: true };
        const dym = didYouMean(k, known);
        const hint = dym ? `did you mean \`${dym}\`?` : known.length ? `allowed keys: ${known.join(', ')}` : undefined;
        return { path: [...p, k], code: 'unknown_key', message: `unknown key \`${k}\``, ...(hint ? { hint } : {}), atKey: true };
      });
    }
    case 'invalid_type': {
      const at = valueAt(root, iss.path);
      if (!at.exists && at.parent !== null && typeof at.parent === 'object' && !Array.isArray(at.parent)) {
        return [{ path: p, code: 'missing_key', message: `missing required key \`${String(p[p.length - 1])}\`` }];
      }
      return [{ path: p, code: 'wrong_type', message: iss.message }];
    }
    case 'invalid_union':
      return unionDrafts(iss, p, schema, root);
    case 'invalid_value': {
      const at = valueAt(root, iss.path);
      if (!at.exists && at.parent !== null && typeof at.parent === 'object' && !Array.isArray(at.parent)) {
        return [{ path: p, code: 'missing_key', message: `missing required key \`${String(p[p.length - 1])}\`` }];
      }
      const got = at.value;
      const dym = typeof got === 'string' && iss.values.length > 1 ? didYouMean(got, iss.values.map(String)) : undefined;
      return [{ path: p, code: 'invalid_value', message: iss.message, ...(dym ? { hint: `did you mean \`${dym}\`?` } : {}) }];
    }
    case 'too_small':
    case 'too_big':
      return [{ path: p, code: 'out_of_range', message: iss.message }];
    case 'custom': {
      const params = (iss.params ?? {}) as { code?: string; hint?: string };
      return [{ path: p, code: params.code ?? 'invalid_value', message: iss.message, ...(params.hint ? { hint: params.hint } : {}) }];
    }
    default:
      return [{ path: p, code: 'invalid_value', message: iss.message }];
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing

interface Finding {
  offset: number;
  code: string;
  message: string;
  hint?: string;
}

const CORE_TAG_SOURCES = new Set(['!!str', '!!int', '!!float', '!!bool', '!!null', '!!map', '!!seq', ...[...CORE_TAGS].map((t) => `!<${t}>`)]);

type CstToken = CST.Token | CST.SourceToken;

/**
 * One iterative pass over the parser's tokens, before composing (the composer recurses per level):
 * nesting depth, tags, directives, aliases and non-scalar keys.
 */
export function cstFindings(tokens: readonly CST.Token[]): { depth?: Finding; findings: Finding[]; aliases: number; firstAlias?: number } {
  const findings: Finding[] = [];
  let depthProblem: Finding | undefined;
  let aliases = 0;
  let firstAlias: number | undefined;
  const stack: [unknown, number][] = tokens.map((t) => [t, 0]);
  const push = (v: unknown, depth: number) => {
    if (Array.isArray(v)) for (const x of v) stack.push([x, depth]);
    else if (v && typeof v === 'object') stack.push([v, depth]);
  };
  const keyCheck = (key: unknown) => {
    const k = key as CstToken | null | undefined;
    if (k && (CST.isCollection(k as CST.Token) || k.type === 'alias')) {
      findings.push({ offset: k.offset, code: 'yaml_key', message: 'mapping keys must be plain scalars' });
    }
  };
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    const t = node as Partial<CstToken> & Record<string, unknown>;
    switch (t.type) {
      case 'directive':
        findings.push({ offset: t.offset!, code: 'yaml_directive', message: 'YAML directives (%YAML, %TAG) are not supported', hint: 'remove the directive line' });
        continue;
      case 'tag': {
        const src = String(t.source);
        if (!CORE_TAG_SOURCES.has(src)) findings.push({ offset: t.offset!, code: 'yaml_tag', message: `unsupported YAML tag \`${src}\``, hint: 'remove the tag (`!…`)' });
        continue;
      }
      case 'alias':
        aliases++;
        if (firstAlias === undefined || t.offset! < firstAlias) firstAlias = t.offset!;
        push(t.end, depth);
        continue;
      case 'block-map':
      case 'block-seq':
      case 'flow-collection': {
        if (depth + 1 > MAX_DEPTH) {
          if (!depthProblem || t.offset! < depthProblem.offset) {
            depthProblem = { offset: t.offset!, code: 'yaml_depth', message: `collections are nested more than ${MAX_DEPTH} deep`, hint: 'a policy needs only a few levels of nesting' };
          }
          continue;
        }
        if (t.type === 'flow-collection') push(t.start, depth + 1);
        for (const item of (t.items as { start?: unknown; key?: unknown; sep?: unknown; value?: unknown }[]) ?? []) {
          if (t.type !== 'block-seq') keyCheck(item.key);
          push(item.start, depth + 1);
          push(item.key, depth + 1);
          push(item.sep, depth + 1);
          push(item.value, depth + 1);
        }
        push(t.end, depth + 1);
        continue;
      }
      case 'block-scalar':
        push(t.props, depth);
        continue;
      default:
        push(t.start, depth);
        push(t.value, depth);
        push(t.end, depth);
    }
  }
  return depthProblem ? { depth: depthProblem, findings, aliases, firstAlias } : { findings, aliases, firstAlias };
}

function syntaxIssues(doc: Document, lc: LineCounter, file: string): { fatal: PolicyIssue[]; duplicates: PolicyIssue[] } {
  const fatal: PolicyIssue[] = [];
  const duplicates: PolicyIssue[] = [];
  for (const e of [...doc.errors, ...doc.warnings]) {
    const pos = lc.linePos(e.pos[0]);
    if (e.code === 'DUPLICATE_KEY') {
      const p = pathAtOffset(doc, e.pos[0]);
      duplicates.push({ file, ...pos, path: pathText(p), code: 'duplicate_key', message: `duplicate key \`${String(p[p.length - 1] ?? '?')}\``, hint: 'each key may appear once in a mapping' });
    } else if (e.code === 'TAG_RESOLVE_FAILED') {
      // reported from the tokens, with the tag
    } else {
      const msg = e.message.split('\n')[0]!.replace(/\s+at line \d+, column \d+:?$/, '');
      fatal.push({ file, ...pos, path: '', code: 'yaml_syntax', message: `YAML syntax error: ${msg}` });
    }
  }
  return { fatal, duplicates };
}

/** First nesting problem in the text, if any (the same check the loader runs before composing). */
export function nestingProblem(text: string): { offset: number; message: string } | undefined {
  const d = cstFindings([...new Parser().parse(text)]).depth;
  return d ? { offset: d.offset, message: d.message } : undefined;
}

/**
 * Parse YAML text against a zod schema, locating every issue. Throws PolicyError (`policy_invalid`,
 * `policy_too_large`) listing every problem; never throws anything else for any input.
 */
export function parseYamlWith<T>(
  input: string | Uint8Array,
  schema: z.ZodType<T>,
  opts: ParseOptions & {
    semantic?: (value: T) => SchemaIssue[];
    /** cross-field checks on a document that failed validation (best effort) */
    partialSemantic?: (raw: unknown) => SchemaIssue[];
    emptyMessage?: string;
  },
): ParsedYaml<T> {
  const file = opts.file;
  const text = decodePolicyBytes(input, file);
  const lc = new LineCounter();
  const tokens = [...new Parser(lc.addNewLine).parse(text)];
  const cst = cstFindings(tokens);
  const located = (f: Finding): PolicyIssue => ({ file, ...lc.linePos(f.offset), path: '', code: f.code, message: f.message, ...(f.hint ? { hint: f.hint } : {}) });
  if (cst.depth) throw new PolicyError('policy_invalid', [located(cst.depth)]);
  const docs = [...new Composer(COMPOSE_OPTIONS).compose(tokens, true, text.length)];
  const doc = docs[0]!;
  const { fatal, duplicates } = syntaxIssues(doc, lc, file);
  fatal.push(...cst.findings.map(located));
  if (docs.length > 1) {
    fatal.push({ file, ...lc.linePos(docs[1]!.range?.[0] ?? 0), path: '', code: 'yaml_syntax', message: 'the file contains more than one YAML document', hint: 'remove the `---` separator; a policy is one document' });
  }
  if (cst.aliases > MAX_ALIASES) {
    fatal.push(located({ offset: cst.firstAlias ?? 0, code: 'yaml_alias', message: `the document uses ${cst.aliases} aliases; at most ${MAX_ALIASES} are allowed`, hint: 'alias expansion is limited to prevent resource exhaustion' }));
  }
  if (fatal.length > 0) throw new PolicyError('policy_invalid', sortIssues([...fatal, ...duplicates]));

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: MAX_ALIAS_EXPANSION });
  } catch (e) {
    let first = 0;
    visit(doc, { Alias(_k, n) { first = n.range?.[0] ?? 0; return visit.BREAK; } });
    const msg = e instanceof Error && /Unresolved alias/.test(e.message) ? 'alias refers to an anchor that is not defined before it' : 'alias expansion is too large (possible YAML bomb)';
    throw new PolicyError('policy_invalid', [{ file, ...lc.linePos(first), path: '', code: 'yaml_alias', message: msg }]);
  }
  const locate = (p: readonly PathSeg[], preferKey = false): Location => lc.linePos(offsetOf(doc, p, preferKey));
  if (raw === null || raw === undefined) {
    throw new PolicyError('policy_invalid', [...duplicates, wholeFileIssue(file, 'empty', opts.emptyMessage ?? 'the file is empty')]);
  }
  const r = schema.safeParse(raw, { error: errorMap });
  const drafts: Draft[] = [];
  if (!r.success) {
    for (const iss of r.error.issues) drafts.push(...issueDrafts(iss, schema, raw));
    if (opts.partialSemantic) for (const s of opts.partialSemantic(raw)) drafts.push(fromSchemaIssue(s));
  } else if (opts.semantic) {
    for (const s of opts.semantic(r.data)) drafts.push(fromSchemaIssue(s));
  }
  const issues: PolicyIssue[] = [...duplicates];
  const seen = new Set<string>();
  for (const d of drafts) {
    const pos = locate(d.path, d.atKey);
    const issue: PolicyIssue = { file, ...pos, path: pathText(d.path), message: d.message, code: d.code, ...(d.hint ? { hint: d.hint } : {}) };
    const k = `${issue.line}:${issue.col}:${issue.path}:${issue.message}`;
    if (seen.has(k)) continue;
    seen.add(k);
    issues.push(issue);
  }
  if (issues.length > 0 || !r.success) throw new PolicyError('policy_invalid', sortIssues(issues));
  const lineOf = (p: readonly PathSeg[]): number | undefined => {
    const f = findPath(doc, p);
    if (f.depth !== p.length) return undefined;
    const off = isEmptyScalar(f.node) && f.key ? nodeStart(f.key) : (nodeStart(f.node) ?? nodeStart(f.key));
    return off === undefined ? undefined : lc.linePos(off).line;
  };
  return { value: r.data, file, locate: (p) => locate(p), lineOf };
}

/** Parse and validate policy text. `baseDir` defaults to the current directory. */
export function loadPolicyText(input: string | Uint8Array, opts: ParseOptions & { baseDir?: string }): LoadedPolicy {
  const parsed = parseYamlWith(input, PolicySchema, {
    file: opts.file,
    semantic: policyIssues,
    partialSemantic: partialPolicyIssues,
    emptyMessage: 'the policy is empty',
  });
  return { ...parsed, policy: parsed.value, baseDir: path.resolve(opts.baseDir ?? '.') };
}

/** Read a file with the size limit applied before reading it whole. */
export async function readLimited(file: string, display = file): Promise<Uint8Array> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(file, 'r');
    const st = await fh.stat();
    if (!st.isFile()) throw new PolicyError('policy_unreadable', [{ file: display, line: 0, col: 0, path: '', code: 'unreadable', message: 'not a regular file' }]);
    if (st.size > MAX_POLICY_BYTES) {
      throw new PolicyError('policy_too_large', [
        wholeFileIssue(display, 'too_large', `file is ${st.size} bytes; the limit is ${MAX_POLICY_BYTES} bytes (1 MiB)`, 'split generated rules or use wildcards'),
      ]);
    }
    const buf = Buffer.alloc(MAX_POLICY_BYTES + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > MAX_POLICY_BYTES) {
        throw new PolicyError('policy_too_large', [wholeFileIssue(display, 'too_large', `file is larger than ${MAX_POLICY_BYTES} bytes (1 MiB)`)]);
      }
    }
    return buf.subarray(0, n);
  } catch (e) {
    if (e instanceof PolicyError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${code ?? 'error'})`;
    throw new PolicyError('policy_unreadable', [{ file: display, line: 0, col: 0, path: '', code: 'unreadable', message: why }]);
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

/** Read, parse and validate a policy file. Relative paths inside resolve against its directory. */
export async function loadPolicyFile(file: string, opts: { displayName?: string } = {}): Promise<LoadedPolicy> {
  const display = opts.displayName ?? file;
  const bytes = await readLimited(file, display);
  return loadPolicyText(bytes, { file: display, baseDir: path.dirname(path.resolve(file)) });
}
