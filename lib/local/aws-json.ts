/**
 * The AWS JSON 1.1 wire format the local SSM endpoint and the local event bus
 * both answer in: one writer, so the SDK's error parsing (`__type`, the
 * `x-amzn-errortype` header) sees the same shape from every local service.
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';

/** An error a local AWS JSON service answers with: the SDK turns `code` into the exception's name. */
export class AwsJsonError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** Writes `payload` as an AWS JSON 1.1 answer; `errorType` marks it as an error for the SDK. */
export function answerAwsJson(res: ServerResponse, status: number, payload: unknown, errorType?: string): void {
  const body = JSON.stringify(payload);
  res.writeHead(status, {
    'content-type': 'application/x-amz-json-1.1',
    'content-length': Buffer.byteLength(body),
    'x-amzn-requestid': randomUUID(),
    ...(errorType ? { 'x-amzn-errortype': errorType } : {}),
  });
  res.end(body);
}
