/**
 * What the local gateway writes back: a handler's answer as a Lambda proxy
 * integration passes it on, or the gateway's own answers from the table the
 * CDK configures the deployed gateway with (lambdas/shared/gateway.ts). One
 * module, so every answer leaves in API Gateway's shape.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { APIGatewayProxyResult } from 'aws-lambda';
import { acceptsBinary, gatewayMaxPayloadBytes, renderGatewayResponse } from '../../../lambdas/shared/gateway';
import type { InvokeOutcome } from '../lambda-runtime';

/**
 * Writes an answer as API Gateway would: a base64 body (isBase64Encoded)
 * becomes bytes only when the request's first Accept type is one of the API's
 * binaryMediaTypes; otherwise the caller gets the base64 text itself.
 */
export function send(res: ServerResponse, result: APIGatewayProxyResult, accept?: string): void {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(result.headers ?? {})) headers[k] = String(v);
  res.writeHead(result.statusCode, headers);
  res.end(result.isBase64Encoded && acceptsBinary(accept) ? Buffer.from(result.body, 'base64') : result.body);
}

/** The request body, or 'too_large' past API Gateway's payload limit (the rest is not read). */
export async function readBody(req: IncomingMessage): Promise<Buffer | 'too_large'> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > gatewayMaxPayloadBytes) return 'too_large';
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** What API Gateway answers for what Lambda returned (a Lambda proxy integration). */
export function proxyAnswer(outcome: InvokeOutcome): APIGatewayProxyResult {
  if (outcome.kind === 'timeout') return renderGatewayResponse('INTEGRATION_FAILURE');
  if (outcome.kind === 'error') {
    // Lambda refused the event itself: API Gateway passes Lambda's 413 on, in its own words.
    if (outcome.errorType === 'RequestEntityTooLargeException') {
      return { statusCode: 413, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ message: 'Request Too Long' }) };
    }
    return renderGatewayResponse('INTEGRATION_FAILURE');
  }
  const r = outcome.payload as Partial<APIGatewayProxyResult> | null;
  if (!r || typeof r !== 'object' || typeof r.statusCode !== 'number') return renderGatewayResponse('INTEGRATION_FAILURE');
  return { statusCode: r.statusCode, headers: r.headers ?? {}, body: typeof r.body === 'string' ? r.body : '', isBase64Encoded: r.isBase64Encoded === true };
}

/**
 * The raw HTTP answer to a request Node cannot parse (bad method or request
 * line, headers too large): the project's JSON error shape, then close.
 */
export function unparsableRequestAnswer(errorCode: string | undefined): string {
  const tooLarge = errorCode === 'HPE_HEADER_OVERFLOW';
  const body = JSON.stringify({
    error: tooLarge
      ? { code: 'payload_too_large', message: 'request headers are too large' }
      : { code: 'validation_error', message: 'the request is not valid HTTP' },
  });
  return (
    `HTTP/1.1 ${tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
  );
}
