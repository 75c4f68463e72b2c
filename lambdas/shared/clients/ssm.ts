/** The SSM client, created once per process (endpoint from AWS_ENDPOINT_URL_SSM when set). */
import { SSMClient } from '@aws-sdk/client-ssm';

let client: SSMClient | undefined;

export function ssm(): SSMClient {
  // The SDK's standard retries cover transient network errors (a reset keep-alive socket);
  // the dispatcher adds its own bounded backoff for throttling on top.
  client ??= new SSMClient({ maxAttempts: 3 });
  return client;
}
