/** POST /sandboxes/{id}/exec: run a command with bash -lc in the sandbox. */
import { apiHandler, parse } from './shared/http';
import { execInSandbox, requireApiKey } from './shared/sandboxes';
import { execBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const body = parse(execBody, req.body ?? {});
  return { status: 200, body: await execInSandbox(req.principal, sandboxId, body) };
});
