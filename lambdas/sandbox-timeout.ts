/** POST /sandboxes/{id}/timeout: refresh the idle timer, change the idle timeout or the TTL (up to its cap). */
import { config } from './shared/config';
import { apiHandler, parse } from './shared/http';
import { refreshTimeout } from './shared/lifecycle';
import { requireApiKey } from './shared/sandboxes';
import { timeoutBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const body = parse(timeoutBody(config().limits), req.body ?? {});
  return { status: 200, body: await refreshTimeout(req.principal.tenantId, sandboxId, body) };
});
