/** GET /sandboxes: the caller's sandboxes, newest first, filtered and paginated. */
import { apiHandler, parse } from './shared/http';
import { listSandboxViews, requireApiKey } from './shared/sandboxes';
import { listQuery } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const query = parse(listQuery, req.query, 'query');
  return { status: 200, body: await listSandboxViews(req.principal, query) };
});
