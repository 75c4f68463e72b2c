/**
 * The OpenAPI document: generated from the route table and the zod schemas,
 * served at GET /openapi.json without a key, written to docs/openapi.json by
 * the build; every route is in it, its refs resolve, and real answers of the
 * local stack for every route match the response schemas it was made from.
 * Run: node --import tsx --test test/sdk/openapi.test.ts
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { z } from 'zod';
import { loadConfig } from '../../lambdas/shared/config';
import { openApiDocument, operations } from '../../lambdas/shared/openapi';
import { errorAnswer } from '../../lambdas/shared/responses';
import { routes } from '../../lambdas/shared/routes';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';

const root = join(import.meta.dirname, '..', '..');
type Doc = { paths: Record<string, Record<string, any>>; components: { schemas: Record<string, unknown>; securitySchemes: Record<string, any> } };

/** Every `$ref` in the document, each resolved against it (a JSON pointer). */
function unresolvedRefs(doc: unknown): string[] {
  const missing: string[] = [];
  const resolve = (ref: string) => {
    if (!ref.startsWith('#/')) return false;
    let at: any = doc;
    for (const part of ref.slice(2).split('/')) {
      at = at?.[part.replace(/~1/g, '/').replace(/~0/g, '~')];
      if (at === undefined) return false;
    }
    return true;
  };
  const walk = (v: unknown) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === '$ref' && typeof x === 'string' && !resolve(x)) missing.push(x);
        else walk(x);
      }
    }
  };
  walk(doc);
  return missing;
}

describe('the OpenAPI document', () => {
  const doc = openApiDocument() as unknown as Doc;

  it('describes every route of the route table, with its method, path parameters and auth', () => {
    for (const r of routes) {
      const op = doc.paths[r.path]?.[r.method.toLowerCase()];
      assert.ok(op, `${r.method} ${r.path} is in the document`);
      for (const m of r.path.matchAll(/\{([^}]+)\}/g))
        assert.ok(
          op.parameters.some((p: any) => p.in === 'path' && p.name === m[1]),
          `${r.method} ${r.path} names {${m[1]}}`,
        );
      const schemes = op.security.flatMap((s: Record<string, unknown>) => Object.keys(s));
      if (r.auth === 'none') assert.deepEqual(schemes, []);
      else assert.ok(schemes.includes(r.auth === 'api-key' ? 'apiKey' : 'sandboxToken'), `${r.method} ${r.path} security`);
      assert.ok(op.responses.default && op.responses['400'], 'errors are described');
    }
    const count = Object.values(doc.paths).reduce((n, methods) => n + Object.keys(methods).length, 0);
    assert.equal(count, routes.length, 'nothing beyond the route table');
  });

  it('marks the aliases of the route table deprecated, answering as the routes they stand for', () => {
    const aliases = routes.filter((r) => r.aliasOf);
    assert.deepEqual(
      aliases.map((r) => `${r.method} ${r.path} -> ${r.aliasOf}`),
      ['POST /sandboxes/{id}/stop -> /sandboxes/{id}/pause', 'POST /sandboxes/{id}/start -> /sandboxes/{id}/resume'],
    );
    for (const r of aliases) {
      const { operationId: _a, summary: _s, deprecated, ...alias } = doc.paths[r.path]![r.method.toLowerCase()];
      const { operationId: _t, summary: _u, ...target } = doc.paths[r.aliasOf!]![r.method.toLowerCase()];
      assert.equal(deprecated, true, `${r.path} is deprecated`);
      assert.equal(target.deprecated, undefined, `${r.aliasOf} is not`);
      assert.deepEqual(alias, target, `${r.path} takes and answers what ${r.aliasOf} does`);
    }
    assert.equal(doc.paths['/sandboxes/{id}/pause']!.post.operationId, 'pauseSandbox');
    assert.equal(doc.paths['/sandboxes/{id}/stop']!.post.operationId, 'stopSandbox', 'clients generated from the old document keep their names');
    const deprecated = Object.entries(doc.paths).flatMap(([path, m]) =>
      Object.entries(m)
        .filter(([, op]) => op.deprecated)
        .map(([method]) => `${method.toUpperCase()} ${path}`),
    );
    assert.deepEqual(
      deprecated,
      aliases.map((r) => `${r.method} ${r.path}`),
      'nothing else is deprecated',
    );
  });

  it('resolves every $ref, and names both auth schemes (X-API-Key: key or sandbox token)', () => {
    assert.deepEqual(unresolvedRefs(doc), []);
    assert.equal(doc.components.securitySchemes.apiKey.name, 'X-API-Key');
    assert.equal(doc.components.securitySchemes.sandboxToken.in, 'header');
    const ids = Object.values(doc.paths).flatMap((m) => Object.values(m).map((op: any) => op.operationId));
    assert.equal(new Set(ids).size, ids.length, 'operationIds are unique');
  });

  it('documents request bodies from the request schemas (limits included) and the parse-only fields by hand', () => {
    const create = doc.components.schemas.CreateSandboxRequest as any;
    assert.deepEqual(create.required, ['user_id']);
    assert.equal(create.properties.config.properties.cpu.maximum, loadConfig().limits.maxCpu);
    assert.ok(create.properties.config.properties.network.oneOf, 'network is documented, not {}');
    assert.equal((doc.components.schemas.StartCommandRequest as any).properties.command_id.pattern, '^[A-Za-z0-9_-]{1,64}$');
  });

  it('is what the build wrote to docs/openapi.json', () => {
    const written = JSON.parse(readFileSync(join(root, 'docs', 'openapi.json'), 'utf8'));
    assert.deepEqual(written, JSON.parse(JSON.stringify(openApiDocument())));
  });
});

describe('real answers of the local stack', () => {
  let stack: LocalStack;
  const ops = operations(loadConfig().limits);
  const covered = new Set<string>();

  before(async () => {
    stack = await startLocalStack({ port: 0, reaperIntervalMs: 0 });
  });
  after(async () => {
    await stack?.close();
  });

  /** One call, its answer checked against the schema the document was made from for its route and status. */
  async function call(method: string, template: string, path: string, o: { body?: unknown; bytes?: Buffer; key?: string | null; accept?: string } = {}) {
    const headers: Record<string, string> = {};
    if (o.key !== null) headers['X-API-Key'] = o.key ?? stack.apiKey;
    if (o.body !== undefined) headers['Content-Type'] = 'application/json';
    if (o.bytes) headers['Content-Type'] = 'application/octet-stream';
    if (o.accept) headers.Accept = o.accept;
    const res = await fetch(stack.url + path, { method, headers, body: o.bytes ?? (o.body === undefined ? undefined : JSON.stringify(o.body)) });
    const key = `${method} ${template}`;
    const op = ops[key];
    assert.ok(op, `${key} is a route`);
    const answer = op.responses[res.status];
    const raw = Buffer.from(await res.arrayBuffer());
    const text = raw.toString('utf8');
    if (res.status >= 400) {
      errorAnswer.parse(JSON.parse(text));
      return { status: res.status, body: JSON.parse(text), raw };
    }
    assert.ok(answer, `${key} answered ${res.status}, which the document does not describe: ${text.slice(0, 300)}`);
    covered.add(key);
    if ('json' in answer) {
      const body = JSON.parse(text);
      const checked = (answer.json as z.ZodType).safeParse(body);
      assert.ok(checked.success, `${key} ${res.status}: ${checked.success ? '' : z.prettifyError(checked.error)}\n${text.slice(0, 500)}`);
      return { status: res.status, body, raw };
    }
    if ('bytes' in answer) assert.equal(res.headers.get('content-type'), 'application/octet-stream');
    else assert.equal(text, '');
    return { status: res.status, body: undefined, raw };
  }

  /** Repeats a transfer call while it answers 202. */
  async function settle(method: string, template: string, path: string, body?: unknown) {
    for (let i = 0; i < 30; i++) {
      const r = await call(method, template, path, body === undefined ? {} : { body });
      if (r.status !== 202) return r;
    }
    throw new Error(`${path} still 202`);
  }

  it('match the response schemas for every route in the table', async () => {
    assert.equal((await call('GET', '/health', '/health', { key: null })).status, 200);
    const served = await call('GET', '/openapi.json', '/openapi.json', { key: null });
    assert.equal(served.status, 200);
    assert.deepEqual(Object.keys(served.body.paths).sort(), Object.keys(openApiDocument().paths as object).sort(), 'the served document has every path');

    const user = 'openapi-user';
    const created = await call('POST', '/sandboxes', '/sandboxes', { body: { user_id: user } });
    assert.equal(created.status, 201);
    const id: string = created.body.sandbox_id;
    const s = `/sandboxes/${id}`;
    await call('GET', '/sandboxes', `/sandboxes?user_id=${user}`);
    await call('GET', '/sandboxes/{id}', s);
    assert.equal((await call('POST', '/sandboxes/{id}/exec', `${s}/exec`, { body: { command: 'echo kept > notes.txt; echo out; echo err >&2' } })).status, 200);

    const cat = await call('POST', '/sandboxes/{id}/commands', `${s}/commands`, { body: { command: 'cat', stdin_open: true, command_id: 'oa-cat' } });
    assert.ok([200, 202].includes(cat.status));
    await call('POST', '/sandboxes/{id}/commands/{command_id}/stdin', `${s}/commands/oa-cat/stdin`, { body: { data: 'abc', offset: 0, eof: true } });
    await call('GET', '/sandboxes/{id}/commands/{command_id}', `${s}/commands/oa-cat?wait=5`);
    await call('POST', '/sandboxes/{id}/commands', `${s}/commands`, { body: { command: 'sleep 60', command_id: 'oa-sleep' } });
    await call('POST', '/sandboxes/{id}/commands/{command_id}/kill', `${s}/commands/oa-sleep/kill`, { body: {} });
    await call('GET', '/sandboxes/{id}/commands', `${s}/commands?limit=10`);

    await call('PUT', '/sandboxes/{id}/network', `${s}/network`, { body: { egress: { allow: ['example.com'] } } });
    await call('GET', '/sandboxes/{id}/network/log', `${s}/network/log`);

    await call('PUT', '/sandboxes/{id}/files', `${s}/files?path=a.txt`, { bytes: Buffer.from('hello') });
    const read = await call('GET', '/sandboxes/{id}/files', `${s}/files?path=a.txt`, { accept: 'application/octet-stream' });
    assert.equal(read.raw.toString(), 'hello');
    await call('GET', '/sandboxes/{id}/files/stat', `${s}/files/stat?path=a.txt`);
    await call('GET', '/sandboxes/{id}/files/list', `${s}/files/list?path=/home/agent`);
    await call('POST', '/sandboxes/{id}/files/mkdir', `${s}/files/mkdir`, { body: { path: 'd' } });
    await call('POST', '/sandboxes/{id}/files/move', `${s}/files/move`, { body: { from: 'a.txt', to: 'd/b.txt' } });
    await call('DELETE', '/sandboxes/{id}/files', `${s}/files?path=d&recursive=true`);

    const ticket = await call('POST', '/sandboxes/{id}/files/upload', `${s}/files/upload`, { body: { path: 'up.bin' } });
    const put = await fetch(ticket.body.url, { method: 'PUT', body: Buffer.alloc(1000, 7) });
    assert.equal(put.status, 200, await put.text());
    await settle('POST', '/sandboxes/{id}/files/upload/{upload_id}/complete', `${s}/files/upload/${ticket.body.upload_id}/complete`);
    const download = await call('POST', '/sandboxes/{id}/files/download', `${s}/files/download`, { body: { path: 'up.bin' } });
    await settle('GET', '/sandboxes/{id}/files/download/{download_id}', `${s}/files/download/${download.body.download_id}?wait=5`);

    await call('POST', '/sandboxes/{id}/timeout', `${s}/timeout`, { body: { idle_timeout_seconds: 600 } });
    await call('POST', '/sandboxes/{id}/heartbeat', `${s}/heartbeat`);
    // Pause and resume, then the same by their deprecated names.
    for (const [pause, resume] of [
      ['pause', 'resume'],
      ['stop', 'start'],
    ]) {
      const paused = await call('POST', `/sandboxes/{id}/${pause}`, `${s}/${pause}`);
      if (paused.status === 202) await call('GET', '/sandboxes/{id}', `${s}?wait=20`);
      const resumed = await call('POST', `/sandboxes/{id}/${resume}`, `${s}/${resume}`);
      if (resumed.status === 202) await call('GET', '/sandboxes/{id}', `${s}?wait=20`);
    }

    // Errors have the one error shape.
    assert.equal((await call('GET', '/sandboxes/{id}', '/sandboxes/sbx-aaaaaaaaaaaaaaaaaaaa')).status, 404);
    assert.equal((await call('POST', '/sandboxes', '/sandboxes', { body: {} })).status, 400);

    const ended = await call('DELETE', '/sandboxes/{id}', `${s}?graceful=true`);
    if (ended.status === 202) {
      for (let i = 0; i < 10; i++) {
        const now = await call('GET', '/sandboxes/{id}', `${s}?wait=20`);
        if (now.body.status === 'stopped') break;
      }
    }
    await call('GET', '/users/{user_id}/home/files/list', `/users/${user}/home/files/list`);
    const stored = await call('GET', '/users/{user_id}/home/files', `/users/${user}/home/files?path=notes.txt`, { accept: 'application/octet-stream' });
    assert.equal(stored.raw.toString(), 'kept\n');
    await call('POST', '/users/{user_id}/home/files/download', `/users/${user}/home/files/download`, { body: { path: 'notes.txt' } });

    for (const [route, body] of [
      ['complete', { result: { answer: 42 } }],
      ['error', { error: 'it broke' }],
    ] as const) {
      const other = await call('POST', '/sandboxes', '/sandboxes', { body: { user_id: `${user}-${route}` } });
      await call('POST', `/sandboxes/{id}/${route}`, `/sandboxes/${other.body.sandbox_id}/${route}`, { body });
    }

    const missing = routes.map((r) => `${r.method} ${r.path}`).filter((k) => !covered.has(k));
    assert.deepEqual(missing, [], 'every route answered at least once with a described success');
  });
});
