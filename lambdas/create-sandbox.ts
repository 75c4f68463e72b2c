/**
 * POST /sandboxes: create a sandbox for one of the caller's users. 201 when
 * it is ready within the API's time, else 202 with status `creating` (follow
 * with GET /sandboxes/{id}?wait=20). An Idempotency-Key retry answers the same
 * sandbox as it stands now.
 */
import { config } from './shared/config';
import { apiHandler, parse } from './shared/http';
import { withIdempotency } from './shared/idempotency';
import { emitMetrics } from './shared/metrics';
import { createSandbox, requireApiKey } from './shared/sandboxes';
import { createSandboxBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  const started = Date.now();
  requireApiKey(req.principal);
  const body = parse(createSandboxBody(config().limits), req.body ?? {});
  const view = await withIdempotency(req.principal.tenantId, req.header('idempotency-key'), body, req.deadline, (onRecorded) =>
    createSandbox(req.principal, body, { deadline: req.deadline, onRecorded }).then((r) => r.view),
  );
  // Every create today starts a container from scratch ("cold"); a warm pool's adopted container would say "warm".
  const dims = { Outcome: view.status === 'creating' ? 'creating' : view.status === 'failed' ? 'failed' : 'ready', Start: 'cold' };
  emitMetrics(dims, { SandboxCreates: 1, CreateLatency: Date.now() - started });
  return { status: view.status === 'creating' ? 202 : 201, body: view };
});
