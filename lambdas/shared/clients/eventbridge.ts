/** The EventBridge client, created once per process (endpoint from AWS_ENDPOINT_URL_EVENTBRIDGE when set). */
import { EventBridgeClient } from '@aws-sdk/client-eventbridge';
import { traced } from './capture';

let client: EventBridgeClient | undefined;

export function eventBridge(): EventBridgeClient {
  // Short timeouts: an event is published after the state change it reports, inside the
  // request that made it; a bus that hangs must cost the caller seconds at most (events.ts retries).
  client ??= traced(new EventBridgeClient({ maxAttempts: 2, requestHandler: { connectionTimeout: 1_000, requestTimeout: 2_000 } }));
  return client;
}
