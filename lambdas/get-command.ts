/**
 * GET /sandboxes/{id}/commands/{command_id}?stdout_offset=&stderr_offset=&wait=:
 * the command and its output from those offsets; `wait` long-polls for more
 * output or the end.
 */
import { followCommand } from './shared/commands';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { commandQuery } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const q = parse(commandQuery, req.query, 'query');
  return { status: 200, body: await followCommand(req.principal, req.sandboxId(), req.commandId(), q, req.deadline) };
});
