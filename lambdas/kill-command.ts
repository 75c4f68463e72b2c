/**
 * POST /sandboxes/{id}/commands/{command_id}/kill: stop every process the
 * command started (children that left its group or session too). 202: the
 * status becomes `killed` once they are all gone.
 */
import { killCommand } from './shared/commands';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { killCommandBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const body = parse(killCommandBody, req.body ?? {});
  return { status: 202, body: await killCommand(req.principal, req.sandboxId(), req.commandId(), body.signal, req.deadline) };
});
