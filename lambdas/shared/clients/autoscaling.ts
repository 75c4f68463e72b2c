/** The Auto Scaling client, created once per process (endpoint from AWS_ENDPOINT_URL_AUTO_SCALING when set). */
import { AutoScalingClient } from '@aws-sdk/client-auto-scaling';

let client: AutoScalingClient | undefined;

export function autoScaling(): AutoScalingClient {
  client ??= new AutoScalingClient({ maxAttempts: 3 });
  return client;
}
