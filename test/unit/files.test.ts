/**
 * The files API's decisions as pure functions: which bodies API Gateway treats
 * as binary, which paths a call may name, what fits Lambda's payload, how a
 * tool's outcome is read (and cannot be forged by a file name), how page
 * tokens are bound to their listing. No network.
 * Run: node --import tsx --test test/unit/files.test.ts
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseOutcome } from '../../host-agent/src/files/exec-tool';
import { extractFailure } from '../../host-agent/src/files/sandbox-files';
import { sandboxFilesArgv } from '../../host-agent/src/files/sandbox-tool';
import { fileStagingFolder } from '../../contract/host-protocol';
import { filesRequest } from '../../contract/host-requests';
import { ApiError } from '../../lambdas/shared/errors';
import { homeRelative, isProtectedFromDelete, sandboxFilePath, sandboxPath } from '../../lambdas/shared/file-paths';
import { decodeListToken, fileApiError } from '../../lambdas/shared/files';
import { acceptsBinary, binaryMediaTypes, filesInlineMaxBytes, isBinaryMediaType, lambdaMaxPayloadBytes } from '../../lambdas/shared/gateway';

const refused = (fn: () => unknown, status: number, pattern: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof ApiError && e.status === status && pattern.test(e.message));

describe('binary bodies: API Gateway decides by the binary media types alone', () => {
  it('passes a body as binary when its Content-Type is one of them, parameters and case aside', () => {
    assert.deepEqual(binaryMediaTypes, ['application/octet-stream']);
    assert.equal(isBinaryMediaType('application/octet-stream'), true);
    assert.equal(isBinaryMediaType('Application/Octet-Stream; charset=binary'), true);
    for (const other of [undefined, '', 'application/json', 'text/plain', 'application/x-www-form-urlencoded', '*/*', 'application/*']) {
      assert.equal(isBinaryMediaType(other), false, String(other));
    }
  });

  it("answers bytes only when the request's first Accept type is binary (curl's default */* gets base64 text)", () => {
    assert.equal(acceptsBinary('application/octet-stream'), true);
    assert.equal(acceptsBinary('application/octet-stream, application/json'), true);
    assert.equal(acceptsBinary('application/json, application/octet-stream'), false);
    assert.equal(acceptsBinary('*/*'), false);
    assert.equal(acceptsBinary(undefined), false);
  });

  it('honours wildcards in the configured list, never in the header', () => {
    assert.equal(isBinaryMediaType('image/png', ['image/*']), true);
    assert.equal(isBinaryMediaType('text/plain', ['*/*']), true);
    assert.equal(acceptsBinary('image/*', ['image/png']), false);
  });

  it('keeps an inline file, base64-encoded, inside the 6 MB Lambda payload with room for the rest of the event', () => {
    const base64 = Math.ceil(filesInlineMaxBytes / 3) * 4;
    assert.ok(base64 + 64 * 1024 < lambdaMaxPayloadBytes, `${base64} characters of base64 leave too little of ${lambdaMaxPayloadBytes}`);
    assert.equal(filesInlineMaxBytes, 4 * 1024 * 1024);
  });
});

describe('paths a files call may name', () => {
  it('makes relative paths absolute under /home/agent and passes the rest on as given (the sandbox resolves .. and links)', () => {
    assert.equal(sandboxPath('notes.txt'), '/home/agent/notes.txt');
    assert.equal(sandboxPath('-rf'), '/home/agent/-rf');
    assert.equal(sandboxPath('a b/é 日本.txt'), '/home/agent/a b/é 日本.txt');
    assert.equal(sandboxPath('/etc/../etc/passwd'), '/etc/../etc/passwd');
    assert.equal(sandboxPath('../../etc/passwd'), '/home/agent/../../etc/passwd');
  });

  it('refuses NUL, an empty path, lone surrogates and paths over 4096 bytes, naming the field', () => {
    refused(() => sandboxPath('a\0b'), 400, /^path: must not contain NUL/);
    refused(() => sandboxPath(''), 400, /^path: must not be empty/);
    refused(() => sandboxPath('bad\uD800name', 'to'), 400, /^to: must be valid Unicode/);
    refused(() => sandboxPath('/' + 'x'.repeat(4096)), 400, /^path: is 4097 bytes; at most 4096/);
    refused(() => sandboxPath('é'.repeat(2044)), 400, /as an absolute path; at most 4096/);
    assert.equal(sandboxPath('/' + 'x'.repeat(4095)).length, 4096);
    refused(() => sandboxFilePath('dir/'), 400, /names a directory/);
  });

  it('never deletes or moves the root or the home itself, however it is spelled', () => {
    for (const p of ['/', '/home/agent', '/home/agent/', '/home/agent/x/..', '/home', '//', '/home/./agent']) assert.equal(isProtectedFromDelete(p), true, p);
    for (const p of ['/home/agent/x', '/tmp', '/home/agent/.cache']) assert.equal(isProtectedFromDelete(p), false, p);
  });

  it("keeps a stored home's paths inside the home (the S3 prefix is the tenant's and the user's)", () => {
    assert.equal(homeRelative('/home/agent'), '');
    assert.equal(homeRelative('src/../notes.txt'), 'notes.txt');
    assert.equal(homeRelative('/home/agent/a//b/'), 'a/b');
    for (const outside of ['../other-user/hot/x', '/etc/passwd', '/home/agent/../../tenants/other', '/home/agentx']) {
      refused(() => homeRelative(outside), 400, /outside \/home\/agent/);
    }
  });
});

describe('the host contract for files', () => {
  const sandboxId = 'sbx-aaaaaaaaaaaaaaaaaaaa';
  const staging = fileStagingFolder('acme', sandboxId, 'op-bbbbbbbbbbbbbbbbbbbb');

  it('takes absolute paths only, and staging keys of the files area only', () => {
    assert.equal(filesRequest.safeParse({ op: 'stat', sandboxId, path: '/home/agent/x' }).success, true);
    assert.equal(filesRequest.safeParse({ op: 'stat', sandboxId, path: 'x' }).success, false);
    assert.equal(filesRequest.safeParse({ op: 'stat', sandboxId, path: '/a\0b' }).success, false);
    assert.equal(filesRequest.safeParse({ op: 'read', sandboxId, path: '/x', maxBytes: 1, staging }).success, true);
    for (const bad of ['host-requests/x/', 'files-staging/acme/sbx-aaaaaaaaaaaaaaaaaaaa/../../x/', 'tenants/acme/users/u/hot/']) {
      assert.equal(filesRequest.safeParse({ op: 'read', sandboxId, path: '/x', maxBytes: 1, staging: bad }).success, false, bad);
    }
  });

  it("runs the tool without a shell: the caller's path is one argv element whatever it holds", () => {
    const path = '/home/agent/$(reboot); `id` && rm -rf / #';
    const argv = sandboxFilesArgv('n0nce', 'stat', { path });
    assert.deepEqual(argv.slice(0, 6), ['/usr/bin/python3', '-I', '-S', '-X', 'utf8', '-c']);
    assert.deepEqual(JSON.parse(argv.at(-1)!), { path });
    assert.equal(argv.at(-2), 'stat');
  });

  it("reads the tool's outcome from its last marked line, which a file name printed earlier cannot forge", () => {
    const forged = 'tar: x\nESBX-RESULT-other {"ok":{"size":1}}\nESBX-RESULT-abc {"ok":{"size":2}}\n';
    assert.deepEqual(parseOutcome(forged + '\nESBX-RESULT-abc {"ok":{"size":3}}\n', 'abc').outcome, { ok: { size: 3 } });
    assert.equal(parseOutcome('tar: ESBX-RESULT-abc {"ok":1}', 'abc').outcome, undefined, 'only at the start of a line');
    assert.equal(parseOutcome('nothing here', 'abc').outcome, undefined);
  });

  it("names why an archive would not unpack from tar's own words", () => {
    const failed = { code: 'extract_failed' as const, path: '/home/agent/repo', message: 'tar exited 2' };
    assert.equal(extractFailure(failed, '/usr/bin/tar: This does not look like a tar archive\n').code, 'invalid_archive');
    assert.equal(extractFailure(failed, '/usr/bin/tar: ./big: Cannot write: No space left on device\n').code, 'no_space');
    assert.equal(extractFailure(failed, '/usr/bin/tar: ./x: Cannot open: Permission denied\n').code, 'permission_denied');
  });
});

describe('file errors as the API answers them', () => {
  it('maps each to its status and code, naming the path', () => {
    const cases: [Parameters<typeof fileApiError>[0]['code'], number, string][] = [
      ['not_found', 404, 'not_found'],
      ['permission_denied', 403, 'permission_denied'],
      ['is_a_directory', 409, 'is_a_directory'],
      ['not_a_directory', 409, 'not_a_directory'],
      ['exists', 409, 'exists'],
      ['too_large', 413, 'too_large'],
      ['no_space', 507, 'no_space'],
      ['checksum_mismatch', 422, 'checksum_mismatch'],
      ['incomplete', 503, 'host_unavailable'],
    ];
    for (const [code, status, apiCode] of cases) {
      const err = fileApiError({ code, path: '/home/agent/x y', message: 'm' });
      assert.equal(err.status, status, code);
      assert.equal(err.code, apiCode, code);
      assert.equal(err.toBody().error.path, '/home/agent/x y');
      assert.match(err.message, /^\/home\/agent\/x y: m/);
    }
    assert.equal(fileApiError({ code: 'incomplete', path: '/x', message: 'm' }).headers['Retry-After'], '2');
  });

  it('takes a page token only for the listing it was made for', () => {
    const token = Buffer.from(JSON.stringify({ p: '/home/agent', r: true, a: ['src', 'main.py'] })).toString('base64url');
    assert.deepEqual(decodeListToken(token, '/home/agent', true), ['src', 'main.py']);
    refused(() => decodeListToken(token, '/home/agent/src', true), 400, /^next_token/);
    refused(() => decodeListToken(token, '/home/agent', false), 400, /^next_token/);
    refused(() => decodeListToken('bm90LWpzb24', '/home/agent', true), 400, /^next_token/);
    assert.equal(decodeListToken(undefined, '/x', false), undefined);
  });
});
