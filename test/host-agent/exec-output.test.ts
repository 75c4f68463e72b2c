/**
 * The pieces of commands that need no Docker: reading output at character boundaries, the cwd side channel,
 * argv splitting, host configuration, a command's FIFOs (real ones, in a temporary directory).
 * Run: node --import tsx --test test/host-agent/exec-output.test.ts
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { applyEnvFile, loadHostConfig, parseEnvFile } from '../../host-agent/src/config';
import { CwdMarkerExtractor } from '../../host-agent/src/exec-output';
import { completePrefixLength, nextCharacterStart } from '../../lambdas/shared/command-output';
import { cwdMarkerPrefix, splitCommand } from '../../host-agent/src/exec-wrapper';
import { closeSync, constants, mkdtempSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { makeFifoStdio } from '../../host-agent/src/commands/fifo-stdio';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

describe('output read by offset never splits a character', () => {
  it('holds back an incomplete multi-byte sequence at the end, and only that', () => {
    const text = Buffer.from('aé€😀', 'utf8'); // 1 + 2 + 3 + 4 bytes
    for (let cut = 0; cut <= text.length; cut++) {
      const n = completePrefixLength(text.subarray(0, cut));
      assert.ok(n <= cut);
      // What is given decodes without a replacement character, and nothing complete is held back.
      assert.ok(!text.subarray(0, n).toString('utf8').includes('\uFFFD'), `cut ${cut}`);
      assert.ok([0, 1, 3, 6, 10].includes(n), `cut ${cut} gave ${n}`);
      assert.ok(cut - n < 4);
    }
  });

  it('gives invalid bytes as they are (they are not the start of a character to wait for)', () => {
    assert.equal(completePrefixLength(Buffer.from([0x61, 0xff])), 2);
    assert.equal(completePrefixLength(Buffer.from([0x80, 0x80, 0x80, 0x80])), 4);
  });

  it('starts a tail on the next character', () => {
    const text = Buffer.from('é€😀', 'utf8');
    assert.equal(nextCharacterStart(text, 1), 2);
    assert.equal(nextCharacterStart(text, 3), 5);
    assert.equal(nextCharacterStart(text, 6), 9);
    assert.equal(nextCharacterStart(text, 0), 0);
  });
});

describe('cwd side channel', () => {
  const nonce = 'a'.repeat(32);
  const record = (cwd: string) => Buffer.concat([cwdMarkerPrefix(nonce), Buffer.from(`${Buffer.byteLength(cwd)}:${cwd}\n`)]);

  function extract(stream: Buffer, chunk: number) {
    const data: Buffer[] = [];
    const cwds: string[] = [];
    const extractor = new CwdMarkerExtractor(
      cwdMarkerPrefix(nonce),
      (b) => data.push(Buffer.from(b)),
      (c) => cwds.push(c),
    );
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

  it('passes a line on at once, holding back only an end that could begin a record', () => {
    const seen: string[] = [];
    const extractor = new CwdMarkerExtractor(
      cwdMarkerPrefix(nonce),
      (d) => seen.push(d.toString('utf8')),
      () => undefined,
    );
    extractor.push(Buffer.from('first line\n'));
    assert.deepEqual(seen, ['first line\n'], 'a command following its output sees the line while the command runs');
    const prefix = cwdMarkerPrefix(nonce);
    extractor.push(Buffer.concat([Buffer.from('more\n'), prefix.subarray(0, 5)]));
    assert.deepEqual(seen, ['first line\n', 'more\n'], 'what could be the start of a record waits for the next chunk');
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
    assert.deepEqual(parseEnvFile('A=\'x y\'\nnot a line\nB="q"\n'), { A: 'x y', B: 'q' });
  });
});

describe("a command's FIFOs", () => {
  /** A command's stdio in a fresh directory, and a writer on its stdout FIFO (what the sandbox's shell holds). */
  async function fifos() {
    const dir = mkdtempSync(join(tmpdir(), 'fifo-stdio-'));
    const stdio = await makeFifoStdio(dir, 'cmd-test');
    const writer = openSync(join(dir, 'cmd-test.out'), constants.O_WRONLY | constants.O_NONBLOCK);
    const delivered: string[] = [];
    stdio.stdout.on('data', (chunk: Buffer) => delivered.push(chunk.toString()));
    return {
      stdio,
      path: join(dir, 'cmd-test.out'),
      write: (text: string) => writeSync(writer, text),
      delivered,
      close: () => (closeSync(writer), stdio.close()),
    };
  }

  it('gives what the shell wrote at once, before the event loop read it, and only once', async () => {
    const f = await fifos();
    // Written and read in one synchronous stretch: the loop had no turn to read the FIFO (as when a busy
    // host's due timers run before its ready descriptors are read).
    f.write('last words\n');
    assert.deepEqual(
      f.stdio.readNow('stdout').map((b) => b.toString()),
      ['last words\n'],
    );
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(f.delivered, [], 'the loop found nothing left to read');
    await f.close();
    assert.deepEqual(f.stdio.readNow('stdout'), [], 'nothing once closed');
  });

  it('takes at most 1 MiB at once from a FIFO a left-behind process keeps writing', async () => {
    const f = await fifos();
    // Paused: the stream stops reading, so the FIFO is full (and `yes` waiting to write more) when readNow comes.
    f.stdio.stdout.pause();
    const writer = spawn('sh', ['-c', 'exec yes 0123456789abcdef > "$1"', 'sh', f.path]);
    try {
      await new Promise((r) => setTimeout(r, 200));
      const taken = f.stdio.readNow('stdout').reduce((n, b) => n + b.length, 0);
      assert.ok(taken > 0 && taken <= 1024 * 1024, `took ${taken} bytes`);
    } finally {
      writer.kill('SIGKILL');
      await f.close();
    }
  });

  it('hands a paused stream its buffered output first, so the order holds', async () => {
    const f = await fifos();
    f.stdio.stdout.pause();
    f.write('first ');
    for (let i = 0; i < 100 && f.stdio.stdout.readableLength === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(f.stdio.stdout.readableLength > 0, 'the stream read the first write into its buffer');
    f.write('second');
    const rest = f.stdio.readNow('stdout').map((b) => b.toString());
    assert.deepEqual([...f.delivered, ...rest], ['first ', 'second']);
    await f.close();
  });
});
