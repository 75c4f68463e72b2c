/** GET /health: liveness of the API and its table (no key needed). */
import { DescribeTableCommand } from '@aws-sdk/client-dynamodb';
import { appVersion } from '../contract/version';
import { dynamo } from './shared/clients/dynamodb';
import { config } from './shared/config';
import { apiHandler } from './shared/http';

const startedAt = new Date().toISOString();

export const handler = apiHandler(
  async () => {
    let database = 'ok';
    try {
      await dynamo().send(new DescribeTableCommand({ TableName: config().tables.sandboxes }));
    } catch (err) {
      database = `unavailable: ${(err as Error).name}`;
    }
    const healthy = database === 'ok';
    return {
      status: healthy ? 200 : 503,
      body: { status: healthy ? 'healthy' : 'degraded', database, version: process.env.APP_VERSION ?? appVersion, started_at: startedAt },
    };
  },
  { auth: 'none' },
);
