/** The SSM client, created once per process (endpoint from AWS_ENDPOINT_URL_SSM when set). */
import { SSMClient } from '@aws-sdk/client-ssm';
import { boundByCallDeadline } from './deadline';
import { traced } from './capture';
import { timeSdkClient } from '../timing';

let client: SSMClient | undefined;

export function ssm(): SSMClient {
  // The SDK's standard retries cover transient network errors (a reset keep-alive socket);
  // the dispatcher adds its own bounded backoff for throttling on top.
  // Timeouts: a dependency that hangs (not refuses) must fail in time for a 503, not outlast the API's 29 s.
  if (!client) {
    const base = new SSMClient({ maxAttempts: 3, requestHandler: { connectionTimeout: 3_000, requestTimeout: 10_000, throwOnRequestTimeout: true } });
    timeSdkClient(base, 'ssm');
    client = traced(boundByCallDeadline(base, 'SSM'));
  }
  return client;
}
