/**
 * Errors the SDK throws. Every answer of the API that is not a success is a
 * SandboxApiError carrying the API's `code` (e.g. `not_found`, `invalid_state`,
 * `offset_mismatch`), its message and the fields it named (e.g. `path`).
 */

export class SandboxError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SandboxError';
  }
}

/** An error answer of the API: `{"error": {"code", "message", ...}}` with its HTTP status. */
export class SandboxApiError extends SandboxError {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Fields beside code and message, e.g. `path` or `expected_offset`. */
    readonly details: Record<string, unknown> = {},
    /** Seconds the API asked to wait (Retry-After), when it did. */
    readonly retryAfterSeconds?: number,
  ) {
    super(`${code}: ${message}`);
    this.name = 'SandboxApiError';
  }
}

/** 401 / 403: no key, or a key that is not valid for this call. */
export class AuthenticationError extends SandboxApiError {
  override name = 'AuthenticationError';
}
/** 404: the sandbox, command or file is not there (or belongs to another tenant). */
export class NotFoundError extends SandboxApiError {
  override name = 'NotFoundError';
}
/** 409: the resource is in a state that does not allow the call (`invalid_state`, `conflict`, `offset_mismatch`, `exists`). */
export class ConflictError extends SandboxApiError {
  override name = 'ConflictError';
}
/** 429 after the retries ran out. */
export class RateLimitError extends SandboxApiError {
  override name = 'RateLimitError';
}

/** The API could not be reached (connection refused, reset, timed out) after the retries ran out. */
export class ConnectionError extends SandboxError {
  override name = 'ConnectionError';
}

/** Something did not happen within the time the SDK waits for it (a sandbox becoming ready, a transfer). */
export class TimeoutError extends SandboxError {
  override name = 'TimeoutError';
}

/** The bytes that arrived are not the bytes that were sent (sha256 differs). */
export class ChecksumError extends SandboxError {
  override name = 'ChecksumError';
}

export function apiErrorOf(status: number, body: unknown, retryAfterSeconds?: number): SandboxApiError {
  const e = (body as { error?: Record<string, unknown> } | undefined)?.error;
  const code = typeof e?.code === 'string' ? e.code : `http_${status}`;
  const message = typeof e?.message === 'string' ? e.message : `the API answered ${status}`;
  const { code: _c, message: _m, ...details } = e ?? {};
  const Kind =
    status === 401 || status === 403
      ? AuthenticationError
      : status === 404
        ? NotFoundError
        : status === 409
          ? ConflictError
          : status === 429
            ? RateLimitError
            : SandboxApiError;
  return new Kind(status, code, message, details, retryAfterSeconds);
}
