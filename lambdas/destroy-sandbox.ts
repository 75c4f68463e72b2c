/**
 * DELETE /sandboxes/{id}?graceful=true|false: end a sandbox; the record stays.
 * 204 when it ended within the API's time, else 202 with status
 * `shutting_down` (its host finishes and records the end).
 */
import { apiHandler, parse } from './shared/http';
import { destroySandbox, requireApiKey } from './shared/sandboxes';
import { destroyQuery } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const { graceful } = parse(destroyQuery, req.query, 'query');
  const result = await destroySandbox(req.principal, sandboxId, graceful === 'true', req.deadline);
  return result.done ? { status: 204 } : { status: 202, body: result.view };
});
