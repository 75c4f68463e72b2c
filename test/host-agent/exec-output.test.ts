/**
 * The pieces of exec that need no Docker: output capping, the cwd side channel,
 * argv splitting, host configuration.
 * Run: node --import tsx --test test/host-agent/exec-output.test.ts
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { applyEnvFile, loadHostConfig, parseEnvFile } from '../../host-agent/src/config';
import { CwdMarkerExtractor, StreamCapture, fitOutputs, jsonBytes } from '../../host-agent/src/exec-output';
import { cwdMarkerPrefix, splitCommand } from '../../host-agent/src/exec-wrapper';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function capture(bytes: Buffer, limit: number, chunk = 997): StreamCapture {
  const c = new StreamCapture(limit);
  for (let i = 0; i < bytes.length; i += chunk) c.push(bytes.subarray(i, i + chunk));
  return c;
}

const jsonSize = (s: string) => Buffer.byteLength(JSON.stringify(s)) - 2;

describe('output capping', () => {
  it('keeps small output whole and untruncated', () => {
    const out = capture(Buffer.from('hello\n'), 100);
    const err = capture(Buffer.from('oops\n'), 100);
    const fitted = fitOutputs(out.snapshot(), err.snapshot(), 100);
    assert.deepEqual(fitted, { stdout: { text: 'hello\n', truncated: false }, stderr: { text: 'oops\n', truncated: false } });
  });

  it('keeps the head and the tail of a huge stream, says how much was cut, and counts every byte', () => {
    const body = Buffer.concat([Buffer.from('HEAD-'), Buffer.alloc(5_000_000, 'x'), Buffer.from('-TAIL')]);
    const out = capture(body, 20_000, 65_536);
    assert.equal(out.totalBytes, body.length);
    const { stdout } = fitOutputs(out.snapshot(), capture(Buffer.alloc(0), 20_000).snapshot(), 20_000);
    assert.equal(stdout.truncated, true);
    assert.ok(stdout.text.startsWith('HEAD-xxx'));
    assert.ok(stdout.text.endsWith('xxx-TAIL'));
    assert.match(stdout.text, /\[\.\.\. \d+ bytes truncated \.\.\.\]/);
    assert.ok(jsonSize(stdout.text) <= 20_000);
  });

  it('stays within the budget in JSON bytes for multibyte text, control characters and invalid UTF-8', () => {
    const samples = [
      Buffer.from('日本語テキスト🚀'.repeat(5_000)),
      Buffer.from('\u0001\u0002"\\\n\t'.repeat(10_000), 'latin1'),
      randomBytes(300_000),
    ];
    for (const sample of samples) {
      for (const budget of [1_000, 20_000]) {
        const fitted = fitOutputs(capture(sample, budget).snapshot(), capture(sample, budget).snapshot(), budget);
        assert.ok(jsonSize(fitted.stdout.text) + jsonSize(fitted.stderr.text) <= budget, `budget ${budget}`);
        assert.equal(fitted.stdout.truncated, true);
        assert.ok(jsonBytes(sample) >= sample.length);
      }
    }
  });

  it('gives a short stream all of itself and the rest of the budget to the long one', () => {
    const fitted = fitOutputs(capture(Buffer.alloc(100_000, 'o'), 10_000).snapshot(), capture(Buffer.from('short error\n'), 10_000).snapshot(), 10_000);
    assert.deepEqual(fitted.stderr, { text: 'short error\n', truncated: false });
    assert.ok(jsonSize(fitted.stdout.text) > 9_000 && jsonSize(fitted.stdout.text) <= 10_000 - 12);
  });

  it('never cuts a multibyte character in half', () => {
    const fitted = fitOutputs(capture(Buffer.from('é'.repeat(50_000)), 1_000).snapshot(), capture(Buffer.alloc(0), 1_000).snapshot(), 1_000);
    assert.ok(!fitted.stdout.text.includes('\ufffd'));
  });
});

describe('cwd side channel', () => {
  const nonce = 'a'.repeat(32);
  const record = (cwd: string) => Buffer.concat([cwdMarkerPrefix(nonce), Buffer.from(`${Buffer.byteLength(cwd)}:${cwd}\n`)]);

  function extract(stream: Buffer, chunk: number) {
    const data: Buffer[] = [];
    const cwds: string[] = [];
    const extractor = new CwdMarkerExtractor(cwdMarkerPrefix(nonce), (b) => data.push(Buffer.from(b)), (c) => cwds.push(c));
    for (let i = 0; i < stream.length; i += chunk) extractor.push(stream.subarray(i, i + chunk));
    extractor.end();
    return { data: Buffer.concat(data).toString('utf8'), cwds };
  }

  it('strips the record wherever chunk boundaries fall and returns the directory, newlines and all', () => {
    const cwd = '/tmp/dé jà/with\nnewline:colon';
    const stream = Buffer.concat([Buffer.from('before'), record(cwd), Buffer.from('after')]);
    for (const chunk of [1, 2, 3, 7, 64, 4096]) {
      assert.deepEqual(extract(stream, chunk), { data: 'beforeafter', cwds: [cwd] }, `chunk ${chunk}`);
    }
  });

  it('passes through text that only looks like a record', () => {
    const fake = Buffer.concat([cwdMarkerPrefix('b'.repeat(32)), Buffer.from('4:/tmp\n')]);
    const broken = Buffer.concat([cwdMarkerPrefix(nonce), Buffer.from('x:/tmp\n')]);
    assert.deepEqual(extract(Buffer.concat([fake, broken]), 5), { data: Buffer.concat([fake, broken]).toString('utf8'), cwds: [] });
  });
});

describe('command argv', () => {
  it('splits long commands into pieces that rejoin exactly, never inside a surrogate pair', () => {
    const command = 'x'.repeat(31_999) + '🚀' + 'y'.repeat(70_000) + '日本';
    const pieces = splitCommand(command);
    assert.equal(pieces.join(''), command);
    assert.ok(pieces.every((p) => p.length <= 32_000 && Buffer.byteLength(p) < 128 * 1024));
    assert.ok(pieces.every((p) => !/^[\udc00-\udfff]/.test(p)));
  });
});

describe('host configuration', () => {
  it('reads an env file that the real environment overrides', () => {
    const dir = mkdtempSync(join(tmpdir(), 'host-env-'));
    const file = join(dir, 'host.env');
    writeFileSync(file, '# comment\nSANDBOX_NETWORK=from-file\nexport STATE_DIR="/srv/state"\nEGRESS_ALLOW=172.18.0.1:8000, 10.0.0.5:443\n');
    const env: NodeJS.ProcessEnv = { HOST_AGENT_ENV_FILE: file, SANDBOX_NETWORK: 'from-env' };
    applyEnvFile(env);
    const config = loadHostConfig(env);
    assert.equal(config.sandboxNetwork, 'from-env');
    assert.equal(config.stateDir, '/srv/state');
    assert.deepEqual(config.egressAllow, [
      { ip: '172.18.0.1', port: 8000 },
      { ip: '10.0.0.5', port: 443 },
    ]);
    assert.equal(config.sandboxUid, 1000);
  });

  it('refuses an EGRESS_ALLOW entry that is not ip:port', () => {
    assert.throws(() => loadHostConfig({ EGRESS_ALLOW: 'example.com:80' }), /EGRESS_ALLOW entry "example.com:80"/);
    assert.throws(() => loadHostConfig({ EGRESS_ALLOW: '300.1.1.1:80' }), /not an IPv4/);
  });

  it('parses quoted values and ignores junk lines', () => {
    assert.deepEqual(parseEnvFile("A='x y'\nnot a line\nB=\"q\"\n"), { A: 'x y', B: 'q' });
  });
});
