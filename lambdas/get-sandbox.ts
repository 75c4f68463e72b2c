/** GET /sandboxes/{id}?wait=S: one sandbox; with `wait`, answers as soon as its status changes (at most S seconds). */
import { apiHandler, parse } from './shared/http';
import { getSandboxView, requireApiKey } from './shared/sandboxes';
import { getSandboxQuery } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const { wait } = parse(getSandboxQuery, req.query, 'query');
  return { status: 200, body: await getSandboxView(req.principal, req.sandboxId(), { waitMs: wait * 1000, deadline: req.deadline }) };
});
