/**
 * The route table: the one list of API routes. The CDK stack builds API Gateway
 * resources and one Lambda per handler from it; the local API server dispatches
 * with it. `handler` names a file `lambdas/<handler>.ts` exporting `handler`.
 */
type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** Who may call a route: an API key, the per-sandbox token (or an API key), or anyone. */
type RouteAuth = 'api-key' | 'sandbox-token' | 'none';

export interface Route {
  method: HttpMethod;
  /** API Gateway resource path, `{name}` for path parameters. */
  path: string;
  handler: HandlerName;
  auth: RouteAuth;
  /** `bytes`: the body is a file's raw bytes (Content-Type application/octet-stream), not JSON. */
  body?: 'bytes';
  /**
   * A deprecated path kept working for clients written against it: it answers
   * exactly as the route of the same method at `aliasOf` (same handler, auth
   * and answers), and the OpenAPI document marks it `deprecated`.
   */
  aliasOf?: string;
}

export const handlerNames = [
  'health',
  'openapi',
  'create-sandbox',
  'list-sandboxes',
  'get-sandbox',
  'exec-sandbox',
  'destroy-sandbox',
  'sandbox-signal',
  'sandbox-timeout',
  'pause-resume-sandbox',
  'start-command',
  'list-commands',
  'get-command',
  'kill-command',
  'write-command-stdin',
  'sandbox-network',
  'sandbox-files',
  'sandbox-file-transfers',
  'home-files',
] as const;
export type HandlerName = (typeof handlerNames)[number];

/** Handlers that are not behind an API route (scheduled or authorizer). */
export const backgroundHandlerNames = ['reaper', 'authorizer', 'fleet-events', 'fleet-capacity'] as const;

export const routes: readonly Route[] = [
  { method: 'GET', path: '/health', handler: 'health', auth: 'none' },
  { method: 'GET', path: '/openapi.json', handler: 'openapi', auth: 'none' },
  { method: 'POST', path: '/sandboxes', handler: 'create-sandbox', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes', handler: 'list-sandboxes', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}', handler: 'get-sandbox', auth: 'api-key' },
  { method: 'DELETE', path: '/sandboxes/{id}', handler: 'destroy-sandbox', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/exec', handler: 'exec-sandbox', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/heartbeat', handler: 'sandbox-signal', auth: 'sandbox-token' },
  { method: 'POST', path: '/sandboxes/{id}/complete', handler: 'sandbox-signal', auth: 'sandbox-token' },
  { method: 'POST', path: '/sandboxes/{id}/error', handler: 'sandbox-signal', auth: 'sandbox-token' },
  { method: 'POST', path: '/sandboxes/{id}/timeout', handler: 'sandbox-timeout', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/pause', handler: 'pause-resume-sandbox', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/resume', handler: 'pause-resume-sandbox', auth: 'api-key' },
  // The first names of pause and resume ("stop" now only ever means ended: status `stopped`).
  { method: 'POST', path: '/sandboxes/{id}/stop', handler: 'pause-resume-sandbox', auth: 'api-key', aliasOf: '/sandboxes/{id}/pause' },
  { method: 'POST', path: '/sandboxes/{id}/start', handler: 'pause-resume-sandbox', auth: 'api-key', aliasOf: '/sandboxes/{id}/resume' },
  { method: 'POST', path: '/sandboxes/{id}/commands', handler: 'start-command', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/commands', handler: 'list-commands', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/commands/{command_id}', handler: 'get-command', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/commands/{command_id}/kill', handler: 'kill-command', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/commands/{command_id}/stdin', handler: 'write-command-stdin', auth: 'api-key' },
  { method: 'PUT', path: '/sandboxes/{id}/network', handler: 'sandbox-network', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/network/log', handler: 'sandbox-network', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/files', handler: 'sandbox-files', auth: 'api-key' },
  { method: 'PUT', path: '/sandboxes/{id}/files', handler: 'sandbox-files', auth: 'api-key', body: 'bytes' },
  { method: 'DELETE', path: '/sandboxes/{id}/files', handler: 'sandbox-files', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/files/list', handler: 'sandbox-files', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/files/stat', handler: 'sandbox-files', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/files/mkdir', handler: 'sandbox-files', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/files/move', handler: 'sandbox-files', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/files/upload', handler: 'sandbox-file-transfers', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/files/upload/{upload_id}/complete', handler: 'sandbox-file-transfers', auth: 'api-key' },
  { method: 'POST', path: '/sandboxes/{id}/files/download', handler: 'sandbox-file-transfers', auth: 'api-key' },
  { method: 'GET', path: '/sandboxes/{id}/files/download/{download_id}', handler: 'sandbox-file-transfers', auth: 'api-key' },
  { method: 'GET', path: '/users/{user_id}/home/files', handler: 'home-files', auth: 'api-key' },
  { method: 'GET', path: '/users/{user_id}/home/files/list', handler: 'home-files', auth: 'api-key' },
  { method: 'POST', path: '/users/{user_id}/home/files/download', handler: 'home-files', auth: 'api-key' },
];

/**
 * The path a request is answered as: an alias's target, else its own. `resource`
 * is the route's path as API Gateway passes it (event.resource).
 *
 *   canonicalPath('POST', '/sandboxes/{id}/stop') // '/sandboxes/{id}/pause'
 */
export function canonicalPath(method: string, resource: string): string {
  return routes.find((r) => r.method === method && r.path === resource)?.aliasOf ?? resource;
}

/** The largest request body the API accepts, in bytes (API Gateway's own cap is 10 MB). */
export const maxBodyBytes = 256 * 1024;
