/** GET /sandboxes/{id}/commands: the sandbox's commands, newest first, paginated (readable after it ended). */
import { listCommands } from './shared/commands';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { listCommandsQuery } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const q = parse(listCommandsQuery, req.query, 'query');
  return { status: 200, body: await listCommands(req.principal, req.sandboxId(), q) };
});
