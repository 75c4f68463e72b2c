/**
 * What the host's egress gateway decides and the control plane logs: the
 * resolver and proxy (host-agent/src/egress/) make decisions, the egress log
 * (lambdas/shared/egress-log.ts) stores them in DynamoDB and the API shows them.
 */
export type EgressKind = 'dns' | 'address' | 'sni' | 'http_host';

/** One decision, as the egress log stores it. */
export interface EgressDecision {
  sandboxId: string;
  kind: EgressKind;
  /** The name asked for (dns, sni, http_host) or the address (address), with the port for connections. */
  target: string;
  verdict: 'allowed' | 'refused';
  reason: string;
  /** Epoch ms. */
  at: number;
}

export interface EgressLogSink {
  record(decision: EgressDecision): void;
}
