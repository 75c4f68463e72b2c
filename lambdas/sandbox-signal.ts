/**
 * POST /sandboxes/{id}/heartbeat | complete | error: signals from the agent
 * inside the sandbox (with its own sandbox token) or from the application.
 * Answers carry seed 000's fields (acknowledged, error_received) beside the
 * sandbox, so clients of that orchestrator work unchanged.
 */
import { apiHandler, parse } from './shared/http';
import { notFound } from './shared/errors';
import { heartbeat, signalEnd } from './shared/lifecycle';
import { completeBody, errorBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  const sandboxId = req.sandboxId();
  // A sandbox token speaks only for its own sandbox.
  if (req.principal.kind === 'sandbox-token' && req.principal.sandboxId !== sandboxId) throw notFound(`sandbox ${sandboxId}`);
  const action = req.event.resource.split('/').pop();
  const tenantId = req.principal.tenantId;
  if (action === 'heartbeat') return { status: 200, body: { acknowledged: true, ...(await heartbeat(tenantId, sandboxId)) } };
  if (action === 'complete') {
    const body = parse(completeBody, req.body ?? {});
    return { status: 200, body: await signalEnd(tenantId, sandboxId, { kind: 'completed', result: body.result }) };
  }
  const body = parse(errorBody, req.body ?? {});
  return {
    status: 200,
    body: { ...(await signalEnd(tenantId, sandboxId, { kind: 'agent_error', error: body.error, details: body.details })), error_received: true },
  };
});
