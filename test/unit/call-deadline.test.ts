/**
 * The request's deadline on AWS calls (lambdas/shared/clients/deadline.ts),
 * against a real socket that accepts and never answers (a hung table, as
 * SIGSTOP on DynamoDB Local makes it in test/faults).
 */
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { DynamoDBClient, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { boundByCallDeadline, DeadlineExceeded, withCallDeadline } from '../../lambdas/shared/clients/deadline';
import { dependencyDown } from '../../lambdas/shared/dependencies';

let server: Server;
let endpoint: string;
const sockets = new Set<Socket>();

before(async () => {
  server = createServer((socket) => {
    sockets.add(socket); // read and never answer
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
after(() => {
  for (const s of sockets) s.destroy();
  server.close();
});

function hungClient(): DynamoDBClient {
  return boundByCallDeadline(
    new DynamoDBClient({
      endpoint,
      region: 'us-east-1',
      credentials: { accessKeyId: 'x', secretAccessKey: 'y' },
      maxAttempts: 4,
      requestHandler: { connectionTimeout: 2_000, requestTimeout: 4_000, throwOnRequestTimeout: true },
    }),
    'DynamoDB',
  );
}

describe('the call deadline', () => {
  it('ends a call to a hung table at the deadline (not after 4 attempts of 4 s) as the dependency being down', async () => {
    const client = hungClient();
    const started = Date.now();
    const err = await withCallDeadline(started + 700, () => client.send(new GetItemCommand({ TableName: 't', Key: { k: { S: 'v' } } }))).then(
      () => assert.fail('a hung table answered'),
      (e: unknown) => e,
    );
    const took = Date.now() - started;
    assert.ok(err instanceof DeadlineExceeded, String(err));
    assert.equal(dependencyDown(err), 'DynamoDB', 'read as the dependency being down: a 503 with Retry-After');
    assert.ok(took < 3_000, `ended after ${took} ms`);
    client.destroy();
  });

  it('starts no attempt past the deadline', async () => {
    const client = hungClient();
    const before = sockets.size;
    await assert.rejects(
      withCallDeadline(Date.now() - 1, () => client.send(new GetItemCommand({ TableName: 't', Key: { k: { S: 'v' } } }))),
      DeadlineExceeded,
    );
    assert.equal(sockets.size, before, 'no connection was made');
    client.destroy();
  });

  it('leaves calls outside a request (the host daemon, scripts) to the SDK’s own timeouts', async () => {
    const client = boundByCallDeadline(
      new DynamoDBClient({
        endpoint,
        region: 'us-east-1',
        credentials: { accessKeyId: 'x', secretAccessKey: 'y' },
        maxAttempts: 1,
        requestHandler: { requestTimeout: 300, throwOnRequestTimeout: true },
      }),
      'DynamoDB',
    );
    const err = await client.send(new GetItemCommand({ TableName: 't', Key: { k: { S: 'v' } } })).then(
      () => assert.fail('answered'),
      (e: unknown) => e as Error,
    );
    assert.notEqual(err.name, 'DeadlineExceeded');
    assert.ok(dependencyDown(err), `${err.name}: a socket timeout is also the dependency being down`);
    client.destroy();
  });
});
