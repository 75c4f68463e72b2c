/**
 * Errors the API can show: a code, a message a person can act on, and the
 * HTTP status that fits. Anything else that escapes a handler is a 500.
 */
export type ApiErrorCode =
  | 'invalid_json'
  | 'validation_error'
  | 'missing_api_key'
  | 'invalid_api_key'
  | 'forbidden'
  | 'not_found'
  | 'method_not_allowed'
  | 'invalid_state'
  | 'conflict'
  | 'offset_mismatch'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'too_many_requests'
  | 'quota_exceeded'
  | 'host_error'
  | 'host_timeout'
  | 'host_unavailable'
  | 'service_unavailable'
  | 'gateway_timeout'
  | 'output_too_large'
  | 'no_capacity'
  | 'request_rejected'
  | 'internal_error'
  // Files: each names the path in the error's `path`.
  | 'permission_denied'
  | 'is_a_directory'
  | 'not_a_directory'
  | 'not_a_file'
  | 'exists'
  | 'too_large'
  | 'no_space'
  | 'checksum_mismatch'
  | 'invalid_archive'
  | 'not_acceptable';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode,
    message: string,
    readonly headers: Record<string, string> = {},
    /** More fields a caller can act on (e.g. `expected_offset`), beside code and message. */
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toBody(): { error: { code: ApiErrorCode; message: string } & Record<string, unknown> } {
    return { error: { ...this.details, code: this.code, message: this.message } };
  }
}

/**
 * Work the host carries on with past the API's time (a slow delete, say): the
 * call answers 202 with where it stands, and repeating the call shows the end.
 */
export class StillInProgress extends Error {
  constructor(readonly body: Record<string, unknown>) {
    super('still in progress');
    this.name = 'StillInProgress';
  }
}

export const notFound = (what: string) => new ApiError(404, 'not_found', `${what} not found`);
export const invalidState = (message: string) => new ApiError(409, 'invalid_state', message);
/** A dependency that is down for now: 503 with Retry-After, never a 500. */
export const unavailable = (message: string, retryAfterSeconds = 2) =>
  new ApiError(503, 'service_unavailable', message, { 'Retry-After': String(retryAfterSeconds) });
