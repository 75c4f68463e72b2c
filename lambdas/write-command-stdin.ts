/**
 * POST /sandboxes/{id}/commands/{command_id}/stdin {data, offset, eof?}: write
 * to a command's stdin once: a write at any offset but the next expected one
 * answers 409 with that offset, so a retried write is never applied twice.
 */
import { writeCommandStdin } from './shared/commands';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { commandStdinBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const body = parse(commandStdinBody, req.body ?? {});
  return { status: 200, body: await writeCommandStdin(req.principal, req.sandboxId(), req.commandId(), body, req.deadline) };
});
