/** POST /sandboxes/{id}/stop | start: stop frees CPU and memory and keeps every file; start brings it back. */
import { apiHandler } from './shared/http';
import { pauseSandbox, resumeSandbox } from './shared/lifecycle';
import { requireApiKey } from './shared/sandboxes';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const action = req.event.resource.split('/').pop();
  const view = action === 'stop' ? await pauseSandbox(req.principal.tenantId, sandboxId) : await resumeSandbox(req.principal.tenantId, sandboxId);
  return { status: 200, body: view };
});
