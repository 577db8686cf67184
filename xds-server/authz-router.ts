import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import { envoyServices } from './grpc.js';
import type { CheckRequest__Output } from '../envoy/generated/envoy/service/auth/v3/CheckRequest.js';
import type { CheckResponse } from '../envoy/generated/envoy/service/auth/v3/CheckResponse.js';

/**
 * One `envoy.service.auth.v3.Authorization` service on the control plane's gRPC server, shared by
 * every listener that asks: the route's `context_extensions.lane` says which decision applies
 * (`mcp`). A request naming no lane goes to the default lane; an
 * unknown lane is denied (failure closed).
 */

export type CheckHandler = (req: CheckRequest__Output) => Promise<CheckResponse> | CheckResponse;

export class AuthzRouter {
  private readonly lanes = new Map<string, CheckHandler>();
  private readonly log: Logger;
  constructor(logger: Logger, private readonly defaultLane = 'mcp') {
    this.log = logger.child({ component: 'ext_authz' });
  }

  use(lane: string, handler: CheckHandler): this {
    this.lanes.set(lane, handler);
    return this;
  }

  async check(req: CheckRequest__Output): Promise<CheckResponse> {
    const lane = req.attributes?.context_extensions?.lane ?? this.defaultLane;
    const h = this.lanes.get(lane);
    if (!h) return deny(403, 'internal', `no authorizer for lane`);
    return h(req);
  }

  register(server: { addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): void }): void {
    server.addService(envoyServices().authz.envoy.service.auth.v3.Authorization.service, {
      Check: (call: grpc.ServerUnaryCall<CheckRequest__Output, CheckResponse>, cb: grpc.sendUnaryData<CheckResponse>) => {
        this.check(call.request).then(
          (r) => cb(null, r),
          (e: unknown) => {
            this.log.error({ err: (e as Error)?.message }, 'ext_authz check failed');
            cb(null, deny(403, 'internal', 'authorization failed'));
          },
        );
      },
    });
  }
}

const PERMISSION_DENIED = 7;

/** A denial Envoy answers itself: status, `x-deny-reason`, a one-line body; nothing internal. */
export function deny(httpStatus: number, reason: string, message: string, extraHeaders: Record<string, string> = {}): CheckResponse {
  const headers = [
    ['x-deny-reason', reason],
    ['content-type', 'text/plain'],
    ['cache-control', 'no-store'],
    ...Object.entries(extraHeaders),
  ].map(([key, value]) => ({ header: { key: key!, value: value! }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' as const }));
  return {
    status: { code: PERMISSION_DENIED, message: reason },
    denied_response: { status: { code: httpStatus as never }, headers, body: `${reason}: ${message}\n` },
  };
}

export function allow(headersToSet: Record<string, string> = {}, headersToRemove: string[] = []): CheckResponse {
  return {
    status: { code: 0, message: '' },
    ok_response: {
      headers: Object.entries(headersToSet).map(([key, value]) => ({ header: { key, value }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' as const })),
      headers_to_remove: headersToRemove,
    },
  };
}
