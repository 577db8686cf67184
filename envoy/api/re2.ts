/**
 * Translation of RE2 patterns (as written in protoc-gen-validate `string.pattern` rules) into
 * JavaScript RegExp with the `u` flag. Only constructs whose meaning is the same in both engines are
 * translated; anything else returns undefined and the caller skips the rule rather than guess.
 */

const POSIX_CLASSES: Record<string, string> = {
  alnum: '0-9A-Za-z',
  alpha: 'A-Za-z',
  ascii: '\\x00-\\x7F',
  blank: '\\t ',
  cntrl: '\\x00-\\x1F\\x7F',
  digit: '0-9',
  graph: '!-~',
  lower: 'a-z',
  print: ' -~',
  punct: '!-\\/:-@\\[-`{-~',
  space: '\\t\\n\\v\\f\\r ',
  upper: 'A-Z',
  word: '0-9A-Za-z_',
  xdigit: '0-9A-Fa-f',
};

/** RE2's \s is ASCII whitespace without \v; JS's is wider. */
const RE2_SPACE = '\\t\\n\\f\\r ';

const JS_SYNTAX = new Set('^$\\.*+?()[]{}|/'.split(''));

function escapeLiteral(ch: string): string {
  if (JS_SYNTAX.has(ch) || ch === '-') return '\\' + ch;
  return ch;
}

function hexEscape(cp: number): string {
  return `\\u{${cp.toString(16)}}`;
}

/** RE2 → JS. Returns undefined when the pattern uses something we will not translate. */
export function re2ToJs(pattern: string): RegExp | undefined {
  let flags = 'u';
  let i = 0;
  // Leading flag group: (?i), (?s), (?m) and combinations.
  const lead = /^\(\?([imsU]+)\)/.exec(pattern);
  if (lead) {
    const f = lead[1]!;
    if (f.includes('U')) return undefined;
    for (const c of f) if (!flags.includes(c)) flags += c;
    i = lead[0].length;
  }
  let out = '';
  let inClass = false;
  const n = pattern.length;
  while (i < n) {
    const ch = pattern[i]!;
    if (ch === '\\') {
      const next = pattern[i + 1];
      if (next === undefined) return undefined;
      // Quoted literal \Q...\E
      if (next === 'Q') {
        const end = pattern.indexOf('\\E', i + 2);
        const lit = end < 0 ? pattern.slice(i + 2) : pattern.slice(i + 2, end);
        for (const c of lit) out += inClass ? escapeClassChar(c) : escapeLiteral(c);
        i = end < 0 ? n : end + 2;
        continue;
      }
      if (next === 'A') {
        if (inClass) return undefined;
        out += '(?<![\\s\\S])';
        i += 2;
        continue;
      }
      if (next === 'z') {
        if (inClass) return undefined;
        out += '(?![\\s\\S])';
        i += 2;
        continue;
      }
      if (next === 'C' || next === 'Z') return undefined;
      if (next === 's') {
        out += inClass ? RE2_SPACE : `[${RE2_SPACE}]`;
        i += 2;
        continue;
      }
      if (next === 'S') {
        if (inClass) return undefined;
        out += `[^${RE2_SPACE}]`;
        i += 2;
        continue;
      }
      if ('dDwWbB'.includes(next)) {
        if (inClass && (next === 'b' || next === 'B')) return undefined;
        out += '\\' + next;
        i += 2;
        continue;
      }
      if ('tnrfv'.includes(next)) {
        out += '\\' + next;
        i += 2;
        continue;
      }
      if (next === 'a') {
        out += '\\x07';
        i += 2;
        continue;
      }
      if (next === 'x') {
        const braced = /^\\x\{([0-9A-Fa-f]{1,6})\}/.exec(pattern.slice(i));
        if (braced) {
          out += hexEscape(parseInt(braced[1]!, 16));
          i += braced[0].length;
          continue;
        }
        const two = /^\\x([0-9A-Fa-f]{2})/.exec(pattern.slice(i));
        if (!two) return undefined;
        out += '\\x' + two[1];
        i += 4;
        continue;
      }
      if (next === 'p' || next === 'P') {
        const m = /^\\[pP](?:\{(\^?)([A-Za-z_]+)\}|([A-Za-z]))/.exec(pattern.slice(i));
        if (!m) return undefined;
        const negated = (next === 'P') !== (m[1] === '^');
        const name = m[2] ?? m[3]!;
        const prop = name === 'Any' ? undefined : /^[A-Z][a-z]?$/.test(name) ? name : `Script=${name}`;
        if (prop === undefined) {
          if (negated) return undefined;
          out += inClass ? '\\s\\S' : '[\\s\\S]';
        } else out += `\\${negated ? 'P' : 'p'}{${prop}}`;
        i += m[0].length;
        continue;
      }
      if (/[0-7]/.test(next)) {
        // \0 … octal; \1-\9 backreferences are not RE2.
        const oct = /^\\([0-7]{1,3})/.exec(pattern.slice(i))!;
        if (next !== '0' && oct[1]!.length < 3) return undefined;
        out += hexEscape(parseInt(oct[1]!, 8));
        i += oct[0].length;
        continue;
      }
      if (/[A-Za-z0-9]/.test(next)) return undefined;
      // Escaped punctuation: a literal.
      out += inClass ? escapeClassChar(next) : escapeLiteral(next);
      i += 2;
      continue;
    }
    if (inClass) {
      if (ch === '[') {
        const posix = /^\[:(\^?)([a-z]+):\]/.exec(pattern.slice(i));
        if (posix) {
          const cls = POSIX_CLASSES[posix[2]!];
          if (!cls || posix[1]) return undefined;
          out += cls;
          i += posix[0].length;
          continue;
        }
        out += '\\[';
        i++;
        continue;
      }
      if (ch === ']') {
        inClass = false;
        out += ']';
        i++;
        continue;
      }
      out += ch;
      i++;
      continue;
    }
    if (ch === '[') {
      inClass = true;
      out += '[';
      i++;
      if (pattern[i] === '^') {
        out += '^';
        i++;
      }
      // A ']' right after '[' or '[^' is a literal in RE2.
      if (pattern[i] === ']') {
        out += '\\]';
        i++;
      }
      continue;
    }
    if (ch === '(' && pattern[i + 1] === '?') {
      const named = /^\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>/.exec(pattern.slice(i));
      if (named) {
        out += `(?<${named[1]}>`;
        i += named[0].length;
        continue;
      }
      if (pattern[i + 2] === ':') {
        out += '(?:';
        i += 3;
        continue;
      }
      // Inline flags in the middle of a pattern, lookarounds and the like.
      return undefined;
    }
    if (ch === '{') {
      // A brace that does not start a repetition is a literal in RE2; JS with /u rejects it.
      if (!/^\{\d+(,\d*)?\}/.test(pattern.slice(i))) {
        out += '\\{';
        i++;
        continue;
      }
    }
    if (ch === '}' && !/\{\d+(,\d*)?$/.test(out)) {
      out += '\\}';
      i++;
      continue;
    }
    out += ch;
    i++;
  }
  if (inClass) return undefined;
  try {
    return new RegExp(out, flags);
  } catch {
    return undefined;
  }
}

function escapeClassChar(ch: string): string {
  if (ch === ']' || ch === '\\' || ch === '^' || ch === '-' || ch === '[') return '\\' + ch;
  return ch;
}
