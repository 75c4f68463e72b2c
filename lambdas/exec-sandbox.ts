/**
 * POST /sandboxes/{id}/exec: run a command and wait for it. 200 with its
 * output when it ends within the API's time (about 25 s), else 202 with the
 * command to follow (GET /sandboxes/{id}/commands/{command_id}).
 */
import { apiHandler, parse } from './shared/http';
import { emitMetrics } from './shared/metrics';
import { execInSandbox, requireApiKey } from './shared/sandboxes';
import { execBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  const started = Date.now();
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const body = parse(execBody, req.body ?? {});
  const result = await execInSandbox(req.principal, sandboxId, body, req.deadline);
  emitMetrics({ Outcome: result.done ? result.view.status : 'running' }, { ExecLatency: Date.now() - started });
  return result.done ? { status: 200, body: result.view } : { status: 202, body: result.command };
});
