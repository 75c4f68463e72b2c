/**
 * POST /sandboxes/{id}/stop | start: stop frees CPU and memory and keeps
 * every file; start brings it back. 200 when done within the API's time, else
 * 202 with status `pausing` / `resuming` (its host finishes and records it).
 */
import { apiHandler } from './shared/http';
import { pauseSandbox, resumeSandbox } from './shared/lifecycle';
import { requireApiKey } from './shared/sandboxes';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const action = req.event.resource.split('/').pop();
  const result =
    action === 'stop'
      ? await pauseSandbox(req.principal.tenantId, sandboxId, req.deadline)
      : await resumeSandbox(req.principal.tenantId, sandboxId, req.deadline);
  return { status: result.done ? 200 : 202, body: result.view };
});
