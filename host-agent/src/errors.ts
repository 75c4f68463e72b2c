import type { HostErrorCode } from '../../contract/host-protocol';
import { StorageError } from './storage/errors';

/** An error the host-agent answers as `{ ok: false, error: { code, message } }`. */
export class HostAgentError extends Error {
  constructor(
    readonly code: HostErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'HostAgentError';
  }
}

/** Maps anything thrown to the code and message the control plane sees. */
export function toHostError(error: unknown): { code: HostErrorCode; message: string } {
  if (error instanceof HostAgentError) return { code: error.code, message: error.message };
  if (error instanceof StorageError) return { code: error.code, message: error.message };
  const message = error instanceof Error ? error.message : String(error);
  return { code: 'internal_error', message };
}
