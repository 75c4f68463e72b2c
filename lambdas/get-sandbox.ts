/** GET /sandboxes/{id}: one sandbox. */
import { apiHandler } from './shared/http';
import { getSandboxView, requireApiKey } from './shared/sandboxes';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  return { status: 200, body: await getSandboxView(req.principal, req.sandboxId()) };
});
