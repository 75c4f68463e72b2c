/**
 * POST /sandboxes/{id}/pause | resume (and their deprecated aliases /stop |
 * /start): pause frees CPU and memory and keeps every file; resume brings it
 * back. 200 when done within the API's time, else 202 with status `pausing` /
 * `resuming` (its host finishes and records it).
 */
import { apiHandler } from './shared/http';
import { pauseSandbox, resumeSandbox } from './shared/lifecycle';
import { canonicalPath } from './shared/routes';
import { requireApiKey } from './shared/sandboxes';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  // An alias answers as the route it stands for (routes.ts): /stop is /pause, /start is /resume.
  const pause = canonicalPath(req.event.httpMethod, req.event.resource) === '/sandboxes/{id}/pause';
  const result = pause
    ? await pauseSandbox(req.principal.tenantId, sandboxId, req.deadline)
    : await resumeSandbox(req.principal.tenantId, sandboxId, req.deadline);
  return { status: result.done ? 200 : 202, body: result.view };
});
