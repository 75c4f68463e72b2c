/** POST /sandboxes: create a sandbox for one of the caller's users. */
import { config } from './shared/config';
import { apiHandler, parse } from './shared/http';
import { withIdempotency } from './shared/idempotency';
import { createSandbox, requireApiKey } from './shared/sandboxes';
import { createSandboxBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const body = parse(createSandboxBody(config().limits), req.body ?? {});
  const view = await withIdempotency(req.principal.tenantId, req.header('idempotency-key'), body, () =>
    createSandbox(req.principal, body),
  );
  return { status: 201, body: view };
});
