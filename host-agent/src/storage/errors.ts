/** Errors the storage tiers throw: a code the host-agent maps to its envelope, and a message a person can act on. */
import type { HostErrorCode } from '../../../contract/host-protocol';

export type StorageErrorCode = Extract<HostErrorCode, 'quota_exceeded' | 'storage_error'>;

export class StorageError extends Error {
  constructor(
    readonly code: StorageErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'StorageError';
  }
}

/** The home (or the stored prefix) is larger than the user's hot quota; nothing was transferred. */
export class QuotaExceededError extends StorageError {
  constructor(
    message: string,
    readonly usedBytes: number,
    readonly quotaBytes: number,
  ) {
    super('quota_exceeded', message);
    this.name = 'QuotaExceededError';
  }
}

/** One transfer that still failed after its retries. */
export interface FailedTransfer {
  /** Path relative to the home, POSIX; directories end in `/`. */
  path: string;
  op: 'upload' | 'download' | 'delete';
  message: string;
}

/**
 * Some transfers failed after retries. What succeeded is recorded in the
 * manifest, so the next sync retries exactly the rest.
 */
export class SyncError extends StorageError {
  constructor(
    message: string,
    readonly failed: FailedTransfer[],
    /** What the sync did achieve (counts of the transfers that succeeded). */
    readonly report?: unknown,
  ) {
    super('storage_error', message);
    this.name = 'SyncError';
  }
}

/** The FUSE mount of the cold tier could not be made or removed. */
export class ColdMountError extends StorageError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('storage_error', message, options);
    this.name = 'ColdMountError';
  }
}
