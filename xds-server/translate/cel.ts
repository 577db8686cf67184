/**
 * CEL expressions for Envoy RBAC conditions, in the parsed form Envoy takes
 * (`google.api.expr.v1alpha1.Expr`). Each builder call numbers its nodes from 1, so the same
 * expression always translates to the same bytes (golden files, snapshot hashes).
 *
 * A node may not be shared: the AST is a tree, so a subexpression used twice is built twice.
 */

export type CelExpr = Record<string, unknown>;

export interface CelBuilder {
  ident(name: string): CelExpr;
  str(s: string): CelExpr;
  int(n: number): CelExpr;
  select(operand: CelExpr, field: string): CelExpr;
  call(fn: string, args: CelExpr[], target?: CelExpr): CelExpr;
  /** `a == b` */
  eq(a: CelExpr, b: CelExpr): CelExpr;
  and(a: CelExpr, b: CelExpr): CelExpr;
  or(a: CelExpr, b: CelExpr): CelExpr;
  /** `a + b` on strings */
  concat(a: CelExpr, b: CelExpr): CelExpr;
  /** `lowerAscii(string(filter_state[key]))`: a string filter state object, lower-cased */
  filterStateLower(key: string): CelExpr;
  /** `lowerAscii(connection.requested_server_name)`: the TLS SNI, lower-cased */
  sniLower(): CelExpr;
}

/** A fresh builder (node ids restart at 1). */
export function celBuilder(): CelBuilder {
  let id = 0;
  const next = () => String(++id);
  const b: CelBuilder = {
    ident: (name) => ({ id: next(), ident_expr: { name } }),
    str: (s) => ({ id: next(), const_expr: { string_value: s } }),
    int: (n) => ({ id: next(), const_expr: { int64_value: String(n) } }),
    select: (operand, field) => ({ id: next(), select_expr: { operand, field } }),
    call: (fn, args, target) => ({ id: next(), call_expr: { ...(target ? { target } : {}), function: fn, args } }),
    eq: (x, y) => b.call('_==_', [x, y]),
    and: (x, y) => b.call('_&&_', [x, y]),
    or: (x, y) => b.call('_||_', [x, y]),
    concat: (x, y) => b.call('_+_', [x, y]),
    filterStateLower: (key) => b.call('lowerAscii', [], b.call('string', [b.call('_[_]', [b.ident('filter_state'), b.str(key)])])),
    sniLower: () => b.call('lowerAscii', [], b.select(b.ident('connection'), 'requested_server_name')),
  };
  return b;
}

/**
 * The CEL features the conditions use: `string()`, `+` on strings and `lowerAscii()` are off in
 * Envoy unless enabled (Envoy ≥ 1.40 field, envoy/api/overlay.ts). Inputs are bounded (an authority,
 * a Host header, an SNI).
 */
export const CEL_STRING_FEATURES = { enable_string_conversion: true, enable_string_concat: true, enable_string_functions: true } as const;
