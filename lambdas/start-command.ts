/**
 * POST /sandboxes/{id}/commands: start a command that outlives the request.
 * 202 with the command while it runs, 200 when it ended within `wait`.
 */
import { isFinalCommandStatus } from './shared/command-state';
import { readOutput, specOf, startCommand, toCommandView, waitForEnd } from './shared/commands';
import { apiHandler, parse } from './shared/http';
import { emitMetrics } from './shared/metrics';
import { requireApiKey } from './shared/sandboxes';
import { startCommandBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  const startedAt = Date.now();
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  const body = parse(startCommandBody, req.body ?? {});
  const waitMs = body.wait * 1000;
  const started = await startCommand(req.principal, sandboxId, specOf(body), {
    origin: 'commands',
    ...(body.command_id ? { commandId: body.command_id } : {}),
    deadline: req.deadline,
    waitMs,
  });
  let record = started.record;
  if (!isFinalCommandStatus(record.status) && waitMs > 0) record = await waitForEnd(record, Math.min(Date.now() + waitMs, req.deadline - 1_500));
  const output = await readOutput(record, { stdout: 0, stderr: 0 });
  emitMetrics({ Outcome: record.status }, { CommandStartLatency: Date.now() - startedAt });
  return { status: isFinalCommandStatus(record.status) ? 200 : 202, body: { ...toCommandView(record), ...output } };
});
