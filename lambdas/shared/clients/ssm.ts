/** The SSM client, created once per process (endpoint from AWS_ENDPOINT_URL_SSM when set). */
import { SSMClient } from '@aws-sdk/client-ssm';

let client: SSMClient | undefined;

export function ssm(): SSMClient {
  // Throttling is retried by the dispatcher with its own short backoff.
  client ??= new SSMClient({ maxAttempts: 1 });
  return client;
}
