/**
 * Least privilege, checked against the code: each handler is bundled the way
 * the stack bundles it, and the AWS calls its own modules make (after
 * tree-shaking) must be exactly what lib/constructs/handler-access.ts grants.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backgroundHandlerNames, handlerNames } from '../../lambdas/shared/routes';
import { tables } from '../../lambdas/shared/tables';
import { join } from 'node:path';
import { analyzeCalls, analyzeHandlerCalls, type HandlerCalls } from '../../lib/bundle-analysis';
import {
  commandOutputActions,
  eventBusActions,
  fileStagingActions,
  handlerAccess,
  homeReadActions,
  hostAccess,
  hostDispatchActions,
  pausedStateDropActions,
} from '../../lib/constructs/handler-access';
import { hostAgentDir } from '../../lib/paths';

const tableIndexes = Object.fromEntries(tables.map((t) => [t.id, t.indexes.map((i) => i.name)]));
const allHandlers = [...handlerNames, ...backgroundHandlerNames];

const analyses = new Map<string, Promise<HandlerCalls>>();
/** One analysis per handler, shared by its tests (a failure stays with its handler). */
const analyze = (handler: string): Promise<HandlerCalls> => {
  if (!analyses.has(handler)) analyses.set(handler, analyzeHandlerCalls(handler, tableIndexes));
  return analyses.get(handler)!;
};

const fix = 'update lib/constructs/handler-access.ts to match what the code calls';

describe('handler IAM grants match the AWS calls in each bundle', () => {
  it('lists every handler, and only handlers that exist', () => {
    assert.deepEqual(Object.keys(handlerAccess).sort(), [...allHandlers].sort());
  });

  for (const handler of allHandlers) {
    it(`${handler}: DynamoDB actions per table and queried indexes`, async () => {
      const calls = await analyze(handler);
      const used = Object.fromEntries([...calls.tables].map(([table, e]) => [table, { actions: [...e.actions].sort(), indexes: [...e.indexes].sort() }]));
      const granted = Object.fromEntries(
        handlerAccess[handler].tables.map((g) => [g.table.id, { actions: [...g.actions].sort(), indexes: [...(g.indexes ?? [])].sort() }]),
      );
      assert.deepEqual(granted, used, `${handler}: ${fix}`);
    });

    it(`${handler}: host dispatch (SSM Run Command, staged requests), command output, file staging, stored homes, event publishing and Auto Scaling calls only if the code does them`, async () => {
      const calls = await analyze(handler);
      const used = [...calls.otherActions].sort();
      const access = handlerAccess[handler];
      const granted = [
        ...new Set([
          ...(access.dispatchesToHosts ? hostDispatchActions : []),
          ...(access.readsCommandOutput ? commandOutputActions : []),
          ...(access.publishesEvents ? eventBusActions : []),
          ...(access.autoScaling ?? []),
          ...(access.stagesFiles ? fileStagingActions : []),
          ...(access.readsHomes ? homeReadActions : []),
          ...(access.dropsPausedState ? pausedStateDropActions : []),
        ]),
      ].sort();
      assert.deepEqual(granted, used, `${handler}: ${fix}`);
    });
  }

  it('finds no Scan in any handler', async () => {
    for (const calls of await Promise.all(allHandlers.map(analyze))) {
      for (const [table, e] of calls.tables) assert.ok(!e.actions.has('dynamodb:Scan'), `${calls.handler} scans ${table}`);
    }
  });

  it('host role: DynamoDB, storage, event bus, log shipping, registry and image parameter actions of the host daemon and CLI bundles', async () => {
    const both = await Promise.all(['daemon', 'cli'].map((e) => analyzeCalls(`host-agent ${e}`, join(hostAgentDir, 'src', `${e}.ts`), tableIndexes)));
    const used = new Map<string, { actions: Set<string>; indexes: Set<string> }>();
    const storage = new Set<string>();
    const published = new Set<string>();
    const shipped = new Set<string>();
    for (const calls of both) {
      for (const [table, e] of calls.tables) {
        const entry = used.get(table) ?? { actions: new Set<string>(), indexes: new Set<string>() };
        for (const a of e.actions) entry.actions.add(a);
        for (const i of e.indexes) entry.indexes.add(i);
        used.set(table, entry);
      }
      for (const a of calls.otherActions) (a.startsWith('events:') ? published : a.startsWith('logs:') ? shipped : storage).add(a);
    }
    const usedTables = Object.fromEntries([...used].map(([t, e]) => [t, { actions: [...e.actions].sort(), indexes: [...e.indexes].sort() }]));
    const granted = Object.fromEntries(hostAccess.tables.map((g) => [g.table.id, { actions: [...g.actions].sort(), indexes: [...(g.indexes ?? [])].sort() }]));
    assert.deepEqual(granted, usedTables, `host: ${fix} (hostAccess)`);
    const grantedStorage = hostAccess.storageActions.filter((a) => !hostAccess.mountpointOnlyActions.includes(a)).sort();
    assert.deepEqual(grantedStorage, [...storage].filter((a) => a.startsWith('s3:')).sort(), `host: ${fix} (hostAccess.storageActions)`);
    assert.deepEqual(
      [...hostAccess.autoScaling].sort(),
      [...storage].filter((a) => a.startsWith('autoscaling:')).sort(),
      `host: ${fix} (hostAccess.autoScaling)`,
    );
    assert.deepEqual(hostAccess.publishesEvents ? [...eventBusActions] : [], [...published].sort(), `host: ${fix} (hostAccess.publishesEvents)`);
    assert.deepEqual([...hostAccess.logActions].sort(), [...shipped].sort(), `host: ${fix} (hostAccess.logActions)`);
    assert.deepEqual(
      [...hostAccess.registryActions].sort(),
      [...storage].filter((a) => a.startsWith('ecr:')).sort(),
      `host: ${fix} (hostAccess.registryActions)`,
    );
    assert.deepEqual(
      [...hostAccess.imageParameterActions].sort(),
      [...storage].filter((a) => a.startsWith('ssm:')).sort(),
      `host: ${fix} (hostAccess.imageParameterActions)`,
    );
    assert.deepEqual(
      [...storage].filter((a) => !a.startsWith('s3:') && !a.startsWith('autoscaling:') && !a.startsWith('ecr:') && !a.startsWith('ssm:')),
      [],
      'host: calls no other AWS service',
    );
  });
});
