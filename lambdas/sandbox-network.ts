/** PUT /sandboxes/{id}/network: change the egress policy; GET /sandboxes/{id}/network/log: the egress decisions. */
import { egressLogOf, setEgress } from './shared/egress';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { egressLogQuery, networkBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const sandboxId = req.sandboxId();
  if (req.event.resource.endsWith('/network/log')) {
    const { limit } = parse(egressLogQuery, req.query, 'query');
    return { status: 200, body: await egressLogOf(req.principal.tenantId, sandboxId, limit) };
  }
  const { egress } = parse(networkBody, req.body ?? {});
  return { status: 200, body: await setEgress(req.principal.tenantId, sandboxId, egress) };
});
