/** DELETE /sandboxes/{id}?graceful=true|false: end a sandbox; the record stays, stopped. */
import { apiHandler, parse } from './shared/http';
import { destroySandbox, requireApiKey } from './shared/sandboxes';
import { destroyQuery } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const { graceful } = parse(destroyQuery, req.query, 'query');
  await destroySandbox(req.principal, sandboxId, graceful === 'true');
  return { status: 204 };
});
