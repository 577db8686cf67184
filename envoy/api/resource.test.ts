import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ResourceInvalidError, type ResourceIssue } from '../../common/errors.js';
import { lookupType } from './protos.js';
import {
  clusterLoadAssignment,
  genericSecret,
  listenerWithHcm,
  routeConfiguration,
  staticCluster,
  tlsSecret,
  VALID_EXAMPLES,
} from './resource.fixtures.js';
import {
  decodeResource,
  encodeResource,
  encodeResourceAny,
  resourceName,
  ruleKindReport,
  suggest,
  UNCHECKED_RULE_KINDS,
  validateResource,
} from './resource.js';
import { EXT, NEWER_THAN_PROTOS, XDS } from './type-urls.js';

const HCM_PATH = 'filter_chains[0].filters[0].typed_config';

function hcmOf(listener: Record<string, any>): Record<string, any> {
  return listener.filter_chains[0].filters[0].typed_config;
}

/** The issues as `path → rule` pairs, the shape most assertions compare. */
function rules(issues: readonly ResourceIssue[]): [string, string][] {
  return issues.map((i) => [i.path, i.rule]);
}

function listenerIssues(mutate: (l: Record<string, any>) => void): ResourceIssue[] {
  const l = listenerWithHcm();
  mutate(l);
  return validateResource(XDS.listener, 'ingress', l);
}

function clusterIssues(mutate: (c: Record<string, any>) => void): ResourceIssue[] {
  const c = staticCluster();
  mutate(c);
  return validateResource(XDS.cluster, 'backend', c);
}

function routeIssues(mutate: (r: Record<string, any>) => void): ResourceIssue[] {
  const r = routeConfiguration();
  mutate(r);
  return validateResource(XDS.route, 'egress_routes', r);
}

describe('valid resources', () => {
  it.each(VALID_EXAMPLES.map((e) => [e.typeUrl.split('.').pop()!, e] as const))('%s passes', (_n, ex) => {
    const json = ex.make();
    expect(validateResource(ex.typeUrl, resourceName(ex.typeUrl, json), json)).toEqual([]);
  });

  it('accepts integers as decimal strings, enums as numbers, null as unset', () => {
    const l = listenerWithHcm();
    l.address.socket_address.port_value = '10000';
    hcmOf(l).codec_type = 1;
    hcmOf(l).server_name = null;
    expect(validateResource(XDS.listener, 'ingress', l)).toEqual([]);
  });

  it('accepts a TypedStruct carrying an extension newer than the loaded protos, without looking inside', () => {
    const l = listenerWithHcm();
    hcmOf(l).http_filters.unshift({
      name: 'envoy.filters.http.upstream_rbac',
      typed_config: {
        '@type': EXT.typedStruct,
        type_url: NEWER_THAN_PROTOS.upstreamRbac,
        value: { rules: { action: 'DENY', anything: ['goes', 1, { here: null }] } },
      },
    });
    expect(validateResource(XDS.listener, 'ingress', l)).toEqual([]);
  });

  it('accepts well-known types inside an Any in their special JSON form', () => {
    const r = routeConfiguration();
    r.virtual_hosts[0].typed_per_filter_config = {
      a: { '@type': 'type.googleapis.com/google.protobuf.Struct', value: { k: [1, 'two'] } },
      b: { '@type': 'type.googleapis.com/google.protobuf.Duration', value: '1.5s' },
      c: { '@type': 'type.googleapis.com/google.protobuf.UInt32Value', value: 7 },
    };
    expect(validateResource(XDS.route, 'egress_routes', r)).toEqual([]);
    const bad = routeConfiguration();
    bad.virtual_hosts[0].typed_per_filter_config = {
      b: { '@type': 'type.googleapis.com/google.protobuf.Duration', value: '1.5', seconds: 1 },
    };
    expect(rules(validateResource(XDS.route, 'egress_routes', bad))).toEqual([
      ['virtual_hosts[0].typed_per_filter_config["b"].seconds', 'unknown field'],
      ['virtual_hosts[0].typed_per_filter_config["b"].value', 'duration.format'],
    ]);
  });
});

describe('structural checks', () => {
  it('reports an unknown field with the nearest field name', () => {
    const issues = listenerIssues((l) => {
      hcmOf(l).stat_prefx = 'x';
    });
    expect(issues).toContainEqual({
      typeUrl: XDS.listener,
      resource: 'ingress',
      path: `${HCM_PATH}.stat_prefx`,
      rule: 'unknown field',
      message: "unknown field 'stat_prefx' (did you mean 'stat_prefix'?)",
    });
  });

  it('suggests the snake_case name for a camelCase key and nothing for a distant one', () => {
    const issues = listenerIssues((l) => {
      l.perConnectionBufferLimitBytes = 1;
      l.zzzzzzzz = 1;
    });
    expect(issues.map((i) => i.message)).toEqual([
      "unknown field 'perConnectionBufferLimitBytes' (did you mean 'per_connection_buffer_limit_bytes'?)",
      "unknown field 'zzzzzzzz' for envoy.config.listener.v3.Listener",
    ]);
    expect(suggest('clustr', ['cluster', 'weighted_clusters'])).toBe('cluster');
    expect(suggest('x', ['cluster'])).toBeUndefined();
  });

  it('reports wrong JSON types', () => {
    const issues = listenerIssues((l) => {
      hcmOf(l).use_remote_address = 'true';
      l.filter_chains[0].filters = { name: 'x' };
      l.address.socket_address.port_value = 80.5;
    });
    expect(rules(issues)).toEqual([
      ['address.socket_address.port_value', 'type'],
      ['filter_chains[0].filters', 'type'],
    ]);
    const wrapped = listenerIssues((l) => {
      l.per_connection_buffer_limit_bytes = { value: 5 };
    });
    expect(wrapped[0]!.message).toMatch(/bare uint32 .*written unwrapped/);
  });

  it('reports a bad enum name with a suggestion, and an undefined enum number where defined_only', () => {
    expect(rules(clusterIssues((c) => (c.type = 'STATICC')))).toEqual([['type', 'enum.name']]);
    expect(clusterIssues((c) => (c.type = 'STATICC')).at(0)?.message).toContain("did you mean 'STATIC'?");
    expect(rules(clusterIssues((c) => (c.lb_policy = 99)))).toEqual([['lb_policy', 'enum.defined_only']]);
  });

  it('reports a bad Duration string', () => {
    expect(rules(clusterIssues((c) => (c.connect_timeout = '250ms')))).toEqual([['connect_timeout', 'duration.format']]);
    expect(rules(clusterIssues((c) => (c.connect_timeout = 5)))).toEqual([['connect_timeout', 'duration.format']]);
  });

  it('refuses negative and huge durations in any field, as Envoy does', () => {
    expect(rules(listenerIssues((l) => (hcmOf(l).stream_idle_timeout = '-1s')))).toEqual([[`${HCM_PATH}.stream_idle_timeout`, 'envoy.duration_range']]);
    expect(rules(listenerIssues((l) => (hcmOf(l).stream_idle_timeout = '9223372036s')))).toEqual([
      [`${HCM_PATH}.stream_idle_timeout`, 'envoy.duration_range'],
    ]);
    expect(listenerIssues((l) => (hcmOf(l).stream_idle_timeout = '9223372035.999999999s'))).toEqual([]);
  });

  it('reports a missing or unknown @type in an Any', () => {
    const unknown = listenerIssues((l) => {
      hcmOf(l).http_filters[0].typed_config['@type'] = 'type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope';
    });
    expect(rules(unknown)).toEqual([[`${HCM_PATH}.http_filters[0].typed_config`, 'any.type_url']]);
    expect(unknown[0]!.message).toContain("unknown type 'envoy.extensions.filters.http.nope.v3.Nope'");
    const missing = listenerIssues((l) => {
      delete hcmOf(l).http_filters[1].typed_config['@type'];
    });
    expect(rules(missing)).toEqual([[`${HCM_PATH}.http_filters[1].typed_config`, 'any.type_url']]);
    const notUrl = listenerIssues((l) => {
      hcmOf(l)['@type'] = 'HttpConnectionManager';
    });
    expect(rules(notUrl)).toEqual([[HCM_PATH, 'any.type_url']]);
  });

  it('reports two members of one oneof', () => {
    const issues = listenerIssues((l) => {
      hcmOf(l).rds = { route_config_name: 'r', config_source: { ads: {} } };
    });
    expect(rules(issues)).toEqual([[`${HCM_PATH}.rds`, 'oneof']]);
    expect(issues[0]!.message).toContain("'route_config' and 'rds' are both set");
  });

  it('reports a required oneof left empty (HCM without route_specifier)', () => {
    const issues = listenerIssues((l) => {
      delete hcmOf(l).route_config;
    });
    expect(rules(issues)).toEqual([[HCM_PATH, 'oneof.required']]);
    expect(issues[0]!.message).toBe("exactly one of 'rds', 'route_config', 'scoped_routes' must be set (oneof 'route_specifier')");
  });

  it('checks TypedStruct itself: type_url required, value a JSON object', () => {
    const issues = listenerIssues((l) => {
      hcmOf(l).http_filters[0].typed_config = { '@type': EXT.typedStruct, type_url: '', value: [1] };
    });
    expect(rules(issues)).toEqual([
      [`${HCM_PATH}.http_filters[0].typed_config.value`, 'type'],
      [`${HCM_PATH}.http_filters[0].typed_config.type_url`, 'typed_struct.type_url'],
    ]);
  });

  it('reports every problem, not just the first', () => {
    const issues = listenerIssues((l) => {
      hcmOf(l).stat_prefix = '';
      hcmOf(l).codec_type = 'HTTP9';
      l.address.socket_address.port_value = 70000;
      hcmOf(l).route_config.virtual_hosts[0].domains = [];
    });
    expect(rules(issues)).toEqual([
      ['address.socket_address.port_value', 'uint32.lte = 65535'],
      [`${HCM_PATH}.stat_prefix`, 'string.min_len = 1'],
      [`${HCM_PATH}.codec_type`, 'enum.name'],
      [`${HCM_PATH}.route_config.virtual_hosts[0].domains`, 'repeated.min_items = 1'],
    ]);
  });

  it('refuses a field Envoy disallows by default', () => {
    const issues = routeIssues((r) => {
      r.virtual_hosts[0].rate_limits = [{ actions: [{ dynamic_metadata: { descriptor_key: 'k', metadata_key: { key: 'a', path: [{ key: 'b' }] } } }] }];
    });
    expect(rules(issues)).toEqual([['virtual_hosts[0].rate_limits[0].actions[0].dynamic_metadata', 'envoy.disallowed_by_default']]);
  });

  it('checks the resource name against its name field', () => {
    const c = staticCluster();
    expect(rules(validateResource(XDS.cluster, 'other', c))).toEqual([['name', 'resource.name']]);
    const cla = clusterLoadAssignment();
    expect(validateResource(XDS.endpoint, 'backend', cla)).toEqual([]);
    expect(rules(validateResource(XDS.endpoint, 'b2', cla))).toEqual([['cluster_name', 'resource.name']]);
  });

  it('rejects an unknown resource type URL', () => {
    expect(rules(validateResource('type.googleapis.com/envoy.config.nope.v3.Nope', 'x', {}))).toEqual([['', 'any.type_url']]);
  });

  it('never throws on arbitrary input', () => {
    fc.assert(
      fc.property(fc.constantFrom(...Object.values(XDS)), fc.anything({ withNullPrototype: true, withBigInt: true }), (typeUrl, json) => {
        expect(Array.isArray(validateResource(typeUrl, '', json))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe('protoc-gen-validate rules', () => {
  it('string.min_len: empty and absent stat_prefix', () => {
    const empty = listenerIssues((l) => (hcmOf(l).stat_prefix = ''));
    expect(empty).toEqual([
      {
        typeUrl: XDS.listener,
        resource: 'ingress',
        path: `${HCM_PATH}.stat_prefix`,
        rule: 'string.min_len = 1',
        message: 'must be at least 1 character long',
      },
    ]);
    const absent = listenerIssues((l) => delete hcmOf(l).stat_prefix);
    expect(rules(absent)).toEqual([[`${HCM_PATH}.stat_prefix`, 'string.min_len = 1']]);
  });

  it('repeated.min_items: VirtualHost with empty or absent domains', () => {
    expect(rules(routeIssues((r) => (r.virtual_hosts[1].domains = [])))).toEqual([['virtual_hosts[1].domains', 'repeated.min_items = 1']]);
    expect(rules(routeIssues((r) => delete r.virtual_hosts[1].domains))).toEqual([['virtual_hosts[1].domains', 'repeated.min_items = 1']]);
  });

  it('message.required: a Route without match, a Buffer filter without max_request_bytes', () => {
    expect(rules(routeIssues((r) => delete r.virtual_hosts[1].routes[0].match))).toEqual([
      ['virtual_hosts[1].routes[0].match', 'message.required'],
    ]);
    expect(rules(listenerIssues((l) => delete hcmOf(l).http_filters[0].typed_config.max_request_bytes))).toEqual([
      [`${HCM_PATH}.http_filters[0].typed_config.max_request_bytes`, 'message.required'],
    ]);
  });

  it('numeric bounds on scalars and wrapper types', () => {
    expect(rules(listenerIssues((l) => (l.address.socket_address.port_value = 65536)))).toEqual([
      ['address.socket_address.port_value', 'uint32.lte = 65535'],
    ]);
    expect(rules(listenerIssues((l) => (l.address.socket_address.port_value = -1)))).toEqual([['address.socket_address.port_value', 'type']]);
    expect(rules(listenerIssues((l) => (hcmOf(l).max_request_headers_kb = 0)))).toEqual([[`${HCM_PATH}.max_request_headers_kb`, 'uint32.gt = 0']]);
    expect(rules(listenerIssues((l) => (hcmOf(l).max_request_headers_kb = 8193)))).toEqual([
      [`${HCM_PATH}.max_request_headers_kb`, 'uint32.lte = 8192'],
    ]);
    expect(rules(listenerIssues((l) => (hcmOf(l).http_filters[0].typed_config.max_request_bytes = 0)))).toEqual([
      [`${HCM_PATH}.http_filters[0].typed_config.max_request_bytes`, 'uint32.gt = 0'],
    ]);
    expect(rules(routeIssues((r) => (r.virtual_hosts[1].routes[0].direct_response.status = 199)))).toEqual([
      ['virtual_hosts[1].routes[0].direct_response.status', 'uint32.gte = 200'],
    ]);
    const big = validateResource(EXT.connectionLimit, '', { stat_prefix: 'c', max_connections: 0 });
    expect(rules(big)).toEqual([['max_connections', 'uint64.gte = 1']]);
    expect(validateResource(EXT.connectionLimit, '', { stat_prefix: 'c', max_connections: '18446744073709551615' })).toEqual([]);
    expect(rules(validateResource(EXT.connectionLimit, '', { stat_prefix: 'c', max_connections: '18446744073709551616' }))).toEqual([
      ['max_connections', 'type'],
    ]);
  });

  it('duration.gt: connect_timeout must be positive; dns_refresh_rate above 1ms', () => {
    const zero = clusterIssues((c) => (c.connect_timeout = '0s'));
    expect(zero).toEqual([
      expect.objectContaining({ path: 'connect_timeout', rule: 'duration.gt = 0s', message: 'must be greater than 0s, got 0s' }),
    ]);
    expect(rules(clusterIssues((c) => (c.dns_refresh_rate = '0.001s')))).toEqual([['dns_refresh_rate', 'duration.gt = 0.001s']]);
    expect(clusterIssues((c) => (c.dns_refresh_rate = '0.0011s'))).toEqual([]);
  });

  it('string.well_known_regex HTTP_HEADER_NAME / HTTP_HEADER_VALUE (non-strict, as Envoy declares them)', () => {
    expect(rules(routeIssues((r) => (r.virtual_hosts[0].request_headers_to_remove = ['x-ok', 'x-bad\r\nname'])))).toEqual([
      ['virtual_hosts[0].request_headers_to_remove[1]', 'repeated.items.string.well_known_regex = HTTP_HEADER_NAME'],
    ]);
    expect(rules(routeIssues((r) => (r.virtual_hosts[0].request_headers_to_add[0].header.key = 'x-a\nb')))).toEqual([
      ['virtual_hosts[0].request_headers_to_add[0].header.key', 'string.well_known_regex = HTTP_HEADER_NAME'],
    ]);
    expect(rules(routeIssues((r) => (r.virtual_hosts[0].request_headers_to_add[0].header.value = 'v\u0000')))).toEqual([
      ['virtual_hosts[0].request_headers_to_add[0].header.value', 'string.well_known_regex = HTTP_HEADER_VALUE'],
    ]);
    expect(rules(routeIssues((r) => (r.virtual_hosts[0].routes[1].match.headers[0].name = '')))).toEqual([
      ['virtual_hosts[0].routes[1].match.headers[0].name', 'string.min_len = 1'],
    ]);
  });

  it('string.pattern (RE2 translated): path_separated_prefix must not end with /', () => {
    expect(rules(routeIssues((r) => (r.virtual_hosts[1].routes[0].match = { path_separated_prefix: '/api/' })))).toEqual([
      ['virtual_hosts[1].routes[0].match.path_separated_prefix', 'string.pattern = ^[^?#]+[^?#/]$'],
    ]);
    expect(routeIssues((r) => (r.virtual_hosts[1].routes[0].match = { path_separated_prefix: '/api' }))).toEqual([]);
  });

  it('string.in, repeated.unique, map.keys rules', () => {
    const scheme = listenerIssues((l) => (hcmOf(l).scheme_header_transformation = { scheme_to_overwrite: 'ftp' }));
    expect(rules(scheme)).toEqual([[`${HCM_PATH}.scheme_header_transformation.scheme_to_overwrite`, 'string.in = [http, https]']]);
    const unique = routeIssues((r) => {
      r.virtual_hosts[0].routes[1].route.internal_redirect_policy = { response_headers_to_copy: ['x-a', 'x-b', 'x-a'] };
    });
    expect(rules(unique)).toEqual([['virtual_hosts[0].routes[1].route.internal_redirect_policy.response_headers_to_copy[2]', 'repeated.unique']]);
    const keys = clusterIssues((c) => (c.metadata = { filter_metadata: { '': { a: 1 }, ok: {} } }));
    expect(rules(keys)).toEqual([['metadata.filter_metadata[""]', 'map.keys.string.min_len = 1']]);
  });

  it('bytes rules and base64', () => {
    const header = (raw: string): ResourceIssue[] =>
      routeIssues((r) => (r.virtual_hosts[0].request_headers_to_add[0].header = { key: 'x-raw', raw_value: raw }));
    expect(header(Buffer.from('hello').toString('base64'))).toEqual([]);
    expect(rules(header('not base64!'))).toEqual([['virtual_hosts[0].request_headers_to_add[0].header.raw_value', 'bytes.base64']]);
    expect(rules(header(Buffer.alloc(16385).toString('base64')))).toEqual([
      ['virtual_hosts[0].request_headers_to_add[0].header.raw_value', 'bytes.max_len = 16384'],
    ]);
  });

  it('recurses through nested Anys (typed_config inside typed_config)', () => {
    const l = listenerWithHcm();
    hcmOf(l).http_filters.unshift({
      name: 'envoy.filters.http.credential_injector',
      typed_config: {
        '@type': EXT.credentialInjector,
        overwrite: true,
        credential: {
          name: 'envoy.http.injected_credentials.generic',
          typed_config: { '@type': EXT.genericCredential, credential: { name: '', sds_config: { ads: {} } }, header: 'bad header\n' },
        },
      },
    });
    const inner = `${HCM_PATH}.http_filters[0].typed_config.credential.typed_config`;
    expect(rules(validateResource(XDS.listener, 'ingress', l))).toEqual([
      [`${inner}.credential.name`, 'string.min_len = 1'],
      [`${inner}.header`, 'string.well_known_regex = HTTP_HEADER_NAME'],
    ]);
  });

  it('lists the rule kinds it saw in the loaded protos but does not check', () => {
    const report = ruleKindReport();
    expect(report.checked).toEqual(expect.arrayContaining(['string.min_len', 'repeated.min_items', 'message.required', 'duration.gt', 'uint32.lte']));
    // Today every rule kind used by the loaded protos is checked; a new one shows up here first.
    expect(report.unchecked).toEqual([...UNCHECKED_RULE_KINDS].map(([kind, field]) => ({ kind, field })).sort((a, b) => a.kind.localeCompare(b.kind)));
    expect(report.unchecked).toEqual([]);
  });
});

describe('what the validator leaves to Envoy', () => {
  it('accepts semantic errors only Envoy detects (duplicate domains across virtual hosts)', () => {
    // Envoy rejects this RouteConfiguration ("Only a single wildcard domain is permitted" /
    // duplicate domain); test/e2e/validator-vs-envoy.test.ts shows it against the real binary.
    const r = routeConfiguration();
    r.virtual_hosts.push({ ...r.virtual_hosts[1], name: 'deny2' });
    expect(validateResource(XDS.route, 'egress_routes', r)).toEqual([]);
  });
});

describe('encode / decode', () => {
  it('encodeResource throws ResourceInvalidError carrying every issue', () => {
    const l = listenerWithHcm();
    hcmOf(l).stat_prefix = '';
    l.address.socket_address.port_value = 70000;
    let err: unknown;
    try {
      encodeResource(XDS.listener, 'ingress', l);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ResourceInvalidError);
    expect((err as ResourceInvalidError).code).toBe('resource_invalid');
    expect(rules((err as ResourceInvalidError).issues)).toEqual([
      ['address.socket_address.port_value', 'uint32.lte = 65535'],
      [`${HCM_PATH}.stat_prefix`, 'string.min_len = 1'],
    ]);
  });

  it('round-trips the valid examples (fields at their default value are dropped)', () => {
    const defaults: Record<string, (j: Record<string, any>) => void> = {
      ingress: (j) => {
        delete hcmOf(j).codec_type; // AUTO = 0
        delete hcmOf(j).xff_num_trusted_hops; // 0
      },
      backend: (j) => delete j.lb_policy, // ROUND_ROBIN = 0
    };
    for (const ex of VALID_EXAMPLES) {
      const json = ex.make();
      const name = resourceName(ex.typeUrl, json);
      const bytes = encodeResource(ex.typeUrl, name, json);
      const expected = ex.make();
      if (ex.typeUrl !== XDS.endpoint) defaults[name]?.(expected);
      expect(decodeResource(ex.typeUrl, bytes)).toEqual(expected);
    }
  });

  it('writes the Any explicitly: type_url + the encoded inner message', () => {
    const l = listenerWithHcm();
    const bytes = encodeResource(XDS.listener, 'ingress', l);
    const msg = lookupType(XDS.listener).decode(bytes) as any;
    const any = msg.filter_chains[0].filters[0].typed_config;
    expect(any.type_url).toBe(EXT.hcm);
    const inner = lookupType(EXT.hcm).decode(any.value) as any;
    expect(inner.stat_prefix).toBe('ingress_http');
    expect(inner.http_filters[0].typed_config.type_url).toBe(EXT.buffer);
    expect((lookupType(EXT.buffer).decode(inner.http_filters[0].typed_config.value) as any).max_request_bytes.value).toBe(1048576);
    // And `encodeResourceAny` is the same bytes under the resource's type URL.
    expect(encodeResourceAny(XDS.listener, 'ingress', l)).toEqual({ type_url: XDS.listener, value: bytes });
  });

  it('normalizes the non-canonical forms it accepts', () => {
    const r = routeConfiguration();
    const vh = r.virtual_hosts[0];
    vh.routes[1].route.timeout = '15.000s';
    vh.routes[1].match.headers.push({ name: 'x-n', range_match: { start: 5, end: '9007199254740993' } });
    vh.retry_policy = { num_retries: '3', retry_back_off: { base_interval: '0.100s' } };
    vh.request_headers_to_add.push({ header: { key: 'x-raw', raw_value: Buffer.from('hi').toString('base64url') } });
    vh.typed_per_filter_config = { s: { '@type': 'type.googleapis.com/google.protobuf.Struct', value: { a: [1, null, { b: true }] } } };
    vh.metadata = { filter_metadata: { m: { x: 'y' } } };
    const out = decodeResource(XDS.route, encodeResource(XDS.route, 'egress_routes', r)) as any;
    const v = out.virtual_hosts[0];
    expect(v.routes[1].route.timeout).toBe('15s');
    expect(v.routes[1].match.headers[1]).toEqual({ name: 'x-n', range_match: { start: '5', end: '9007199254740993' } });
    expect(v.retry_policy).toEqual({ num_retries: 3, retry_back_off: { base_interval: '0.1s' } });
    expect(v.request_headers_to_add[1]).toEqual({ header: { key: 'x-raw', raw_value: 'aGk=' } });
    expect(v.typed_per_filter_config).toEqual({ s: { '@type': 'type.googleapis.com/google.protobuf.Struct', value: { a: [1, null, { b: true }] } } });
    expect(v.metadata).toEqual({ filter_metadata: { m: { x: 'y' } } });
  });

  it('keeps oneof members and wrappers set to their default value', () => {
    const l = listenerWithHcm();
    l.address.socket_address.port_value = 0;
    l.per_connection_buffer_limit_bytes = 0;
    hcmOf(l).max_request_headers_kb = 1;
    const out = decodeResource(XDS.listener, encodeResource(XDS.listener, 'ingress', l)) as any;
    expect(out.per_connection_buffer_limit_bytes).toBe(0);
    // port_value is in the port_specifier oneof: set to 0 is different from unset.
    expect(out.address.socket_address).toEqual({ address: '127.0.0.1', port_value: 0 });
  });

  it('decodes bytes from another encoder: defaults written explicitly are omitted, oneof members kept', () => {
    const T = lookupType(XDS.cluster);
    const bytes = T.encode(
      T.fromObject({ name: 'x', type: 0, lb_policy: 0, per_connection_buffer_limit_bytes: { value: 0 }, respect_dns_ttl: false, alt_stat_name: '' }),
    ).finish();
    // `type` is a member of the cluster_discovery_type oneof: STATIC (0) set explicitly stays.
    expect(decodeResource(XDS.cluster, bytes)).toEqual({ name: 'x', type: 'STATIC', per_connection_buffer_limit_bytes: 0 });
  });

  it('round-trips generated clusters and routes (property)', () => {
    const label = fc.stringMatching(/^[a-z][a-z0-9-]{0,14}$/);
    const duration = fc.bigInt({ min: 1n, max: 10n ** 12n }).map((n) => {
      const s = n / 1_000_000_000n;
      const frac = (n % 1_000_000_000n).toString().padStart(9, '0').replace(/0+$/, '');
      return `${s}${frac ? '.' + frac : ''}s`;
    });
    const json = fc.jsonValue({ maxDepth: 3 }).filter((v) => !JSON.stringify(v).includes('-0') && !Object.is(v, -0));
    const cluster = fc.record({
      name: label,
      type: fc.constantFrom('STATIC', 'STRICT_DNS', 'LOGICAL_DNS'),
      connect_timeout: duration,
      per_connection_buffer_limit_bytes: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      metadata: fc.record({ filter_metadata: fc.dictionary(label, fc.dictionary(label, json, { maxKeys: 3 }), { maxKeys: 2 }) }),
      load_assignment: fc.record({
        cluster_name: label,
        endpoints: fc.array(
          fc.record({
            lb_endpoints: fc.array(
              fc.record({
                endpoint: fc.record({
                  address: fc.record({
                    socket_address: fc.record({ address: fc.ipV4(), port_value: fc.integer({ min: 1, max: 65535 }) }),
                  }),
                }),
                load_balancing_weight: fc.integer({ min: 1, max: 1000 }),
              }),
              { minLength: 1, maxLength: 3 },
            ),
          }),
          { maxLength: 2 },
        ),
      }),
    });
    fc.assert(
      fc.property(cluster, (c) => {
        if (Object.keys(c.metadata.filter_metadata).length === 0) delete (c as any).metadata;
        if (c.per_connection_buffer_limit_bytes === 0) (c as any).per_connection_buffer_limit_bytes = 0;
        if (c.load_assignment.endpoints.length === 0) delete (c.load_assignment as any).endpoints;
        expect(validateResource(XDS.cluster, c.name, c)).toEqual([]);
        expect(decodeResource(XDS.cluster, encodeResource(XDS.cluster, c.name, c))).toEqual(c);
      }),
      { numRuns: 150 },
    );

    const headerName = fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/);
    const route = fc.record({
      name: label,
      match: fc.oneof(
        fc.record({ prefix: fc.stringMatching(/^\/[a-z0-9/]{0,20}$/) }),
        fc.record({ path: fc.stringMatching(/^\/[a-z0-9/]{0,20}$/) }),
      ),
      route: fc.record({ cluster: label, timeout: duration }),
      request_headers_to_add: fc.array(
        fc.record({
          header: fc.oneof(
            fc.record({ key: headerName, value: fc.stringMatching(/^[ -~]{1,30}$/) }),
            fc.record({ key: headerName, raw_value: fc.uint8Array({ minLength: 1, maxLength: 20 }).map((b) => Buffer.from(b).toString('base64')) }),
          ),
          append_action: fc.constantFrom('APPEND_IF_EXISTS_OR_ADD', 'ADD_IF_ABSENT', 'OVERWRITE_IF_EXISTS_OR_ADD'),
        }),
        { maxLength: 3 },
      ),
    });
    const rc = fc.record({
      name: label,
      virtual_hosts: fc.array(
        fc.record({ name: label, domains: fc.array(label, { minLength: 1, maxLength: 3 }), routes: fc.array(route, { maxLength: 4 }) }),
        { minLength: 1, maxLength: 3 },
      ),
    });
    fc.assert(
      fc.property(rc, (r) => {
        for (const vh of r.virtual_hosts) {
          if (vh.routes.length === 0) delete (vh as any).routes;
          for (const rt of vh.routes ?? []) {
            if (rt.request_headers_to_add.length === 0) delete (rt as any).request_headers_to_add;
            for (const h of rt.request_headers_to_add ?? []) if (h.append_action === 'APPEND_IF_EXISTS_OR_ADD') delete (h as any).append_action;
          }
        }
        expect(validateResource(XDS.route, r.name, r)).toEqual([]);
        expect(decodeResource(XDS.route, encodeResource(XDS.route, r.name, r))).toEqual(r);
      }),
      { numRuns: 150 },
    );
  });

  it('decodes secrets, endpoints and generic secrets to the same JSON', () => {
    for (const [typeUrl, make] of [
      [XDS.secret, tlsSecret],
      [XDS.secret, genericSecret],
      [XDS.endpoint, clusterLoadAssignment],
    ] as const) {
      const j = make();
      expect(decodeResource(typeUrl, encodeResource(typeUrl, resourceName(typeUrl, j), j))).toEqual(j);
    }
  });
});

describe('type URLs and names', () => {
  it('every type URL in XDS and EXT resolves to a message of the loaded protos', () => {
    for (const url of [...Object.values(XDS), ...Object.values(EXT)]) {
      const t = lookupType(url);
      expect(`type.googleapis.com/${t.fullName.slice(1)}`).toBe(url);
      expect(validateResource(url, '', {}).filter((i) => i.rule === 'any.type_url')).toEqual([]);
    }
  });

  it('types newer than the protos are not in the loaded root (they travel as TypedStruct)', () => {
    for (const url of Object.values(NEWER_THAN_PROTOS)) {
      expect(rules(validateResource(url, '', {}))).toEqual([['', 'any.type_url']]);
    }
  });

  it('resourceName reads name, or cluster_name for a ClusterLoadAssignment', () => {
    expect(resourceName(XDS.listener, listenerWithHcm())).toBe('ingress');
    expect(resourceName(XDS.cluster, staticCluster())).toBe('backend');
    expect(resourceName(XDS.route, routeConfiguration())).toBe('egress_routes');
    expect(resourceName(XDS.secret, genericSecret())).toBe('cred:github');
    expect(resourceName(XDS.endpoint, clusterLoadAssignment())).toBe('backend');
    expect(resourceName(XDS.endpoint, { name: 'x' })).toBe('');
    expect(resourceName(XDS.listener, 'nope')).toBe('');
  });
});
