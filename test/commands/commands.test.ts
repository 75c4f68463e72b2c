/**
 * Commands on the local stack with AWS's limits on (the gateway cuts at 29 s,
 * handlers run as Lambda with their timeout, SSM caps output and runs a fixed
 * number of commands at once): start, follow by offset, kill, stdin, history
 * after the sandbox is gone, and /exec as "start and wait".
 * Run: node --import tsx --test test/commands/commands.test.ts
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { ListCommandsCommand, SSMClient } from '@aws-sdk/client-ssm';
import { startLocalStack, type LocalStack } from '../../lib/local/stack';
import { apiClient, type ApiClient } from '../support/api-client';
import { docker } from '../support/docker';
import { sleep, waitFor } from '../lifecycle/lifecycle-support';

let stack: LocalStack;
let api: ApiClient;
let id: string;

before(async () => {
  stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { COMMAND_OUTPUT_MAX_BYTES: String(64 * 1024 * 1024) } });
  api = apiClient(stack.url, stack.apiKey);
  const res = await api.create('commands-user', { memory_mb: 2048 });
  assert.equal(res.status, 201, res.text);
  id = res.body.sandbox_id;
});
after(async () => {
  await stack?.close();
});

const start = (body: Record<string, unknown>, sandboxId = id) => api.call('POST', `/sandboxes/${sandboxId}/commands`, body);
const get = (commandId: string, q = '', sandboxId = id) => api.call('GET', `/sandboxes/${sandboxId}/commands/${commandId}${q}`);
const exec = (command: string, extra: Record<string, unknown> = {}) => api.exec(id, command, extra);

/** Follows a command to its end by offsets, collecting every byte of both streams. */
async function follow(commandId: string, sandboxId = id, limitMs = 120_000): Promise<{ stdout: Buffer; stderr: Buffer; final: any; reads: number }> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let so = 0;
  let se = 0;
  let reads = 0;
  const until = Date.now() + limitMs;
  for (;;) {
    const res = await get(commandId, `?stdout_offset=${so}&stderr_offset=${se}&wait=10`, sandboxId);
    assert.equal(res.status, 200, res.text);
    reads++;
    out.push(Buffer.from(res.body.stdout, 'utf8'));
    err.push(Buffer.from(res.body.stderr, 'utf8'));
    assert.ok(res.body.stdout_offset_next >= so && res.body.stderr_offset_next >= se, 'offsets never go back');
    const progressed = res.body.stdout_offset_next > so || res.body.stderr_offset_next > se;
    so = res.body.stdout_offset_next;
    se = res.body.stderr_offset_next;
    const done = !['pending', 'running'].includes(res.body.status);
    if (done && !progressed && so >= res.body.stdout_bytes && se >= res.body.stderr_bytes) {
      return { stdout: Buffer.concat(out), stderr: Buffer.concat(err), final: res.body, reads };
    }
    if (Date.now() > until) throw new Error(`command ${commandId} did not end within ${limitMs} ms`);
  }
}

describe('/exec: start a command and wait', () => {
  it('answers a short command as before, with the command_id that reads all of it later', async () => {
    const res = await exec('echo out; echo err >&2; echo more; exit 3');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.stdout, 'out\nmore\n');
    assert.equal(res.body.stderr, 'err\n');
    assert.equal(res.body.exit_code, 3);
    assert.equal(res.body.stdout_bytes, 9);
    assert.equal(res.body.stderr_bytes, 4);
    assert.equal(res.body.timed_out, false);
    assert.equal(res.body.status, 'exited');
    const again = await get(res.body.command_id);
    assert.equal(again.status, 200);
    assert.equal(again.body.stdout, 'out\nmore\n');
    assert.equal(again.body.exit_code, 3);
    assert.equal(again.body.command, 'echo out; echo err >&2; echo more; exit 3');
  });

  it('runs as the agent user with a login environment', async () => {
    const res = await exec('whoami; echo "$HOME"; echo "$PATH" | tr : "\\n" | grep -c local');
    assert.equal(res.body.stdout.split('\n').slice(0, 2).join('\n'), 'agent\n/home/agent');
    assert.equal(res.body.exit_code, 0);
  });

  it("answers the command's own exit code whatever shell options it sets", async () => {
    const cases: [string, number, string][] = [
      ['set -e; echo hi', 0, 'hi\n'],
      ['set -e; false; echo never', 1, ''],
      // bash itself exits 127 on an unbound variable under set -u.
      ['set -u; echo "$NOPE"', 127, ''],
      ['set -o pipefail; false | true; echo $?', 0, '1\n'],
      ['f() { exit 7; }; f; echo never', 7, ''],
      ['trap "echo bye" EXIT; exit 5', 5, 'bye\n'],
      ['set -eu -o pipefail; echo ok', 0, 'ok\n'],
      ['set -e; (exit 0); true', 0, ''],
    ];
    for (const [command, code, stdout] of cases) {
      const res = await exec(command);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.exit_code, code, `${command}: ${res.body.stderr}`);
      assert.equal(res.body.stdout, stdout, command);
    }
  });

  it('hands quotes, substitutions, newlines and unicode to bash unchanged and runs nothing on the host', async () => {
    const payload = `single ' double " back \` dollar $HOME $(echo sub) \\n backslash \\ tab\there\nnew line; | & > < * ? ! # é 日本語 🚀 \r end`;
    const quoted = await exec(`cat <<'PAYLOAD_END'\n${payload}\nPAYLOAD_END`);
    assert.equal(quoted.body.stdout, payload + '\n');
    const evaluated = await exec('echo "$(echo sub)" `echo tick` \'$HOME\' "$HOME" $((6*7)) "é🚀"');
    assert.equal(evaluated.body.stdout, 'sub tick $HOME /home/agent 42 é🚀\n');
  });

  it('keeps the working directory between commands, and an explicit one does not stick', async () => {
    const first = await exec('mkdir -p "/tmp/with space/and\nnewline" && cd "/tmp/with space/and\nnewline"');
    assert.equal(first.body.cwd, '/tmp/with space/and\nnewline');
    const second = await exec('pwd');
    assert.equal(second.body.stdout, '/tmp/with space/and\nnewline\n');
    const explicit = await exec('cd /usr; pwd', { cwd: '/etc' });
    assert.equal(explicit.body.stdout, '/usr\n');
    assert.equal((await exec('pwd')).body.stdout, '/tmp/with space/and\nnewline\n', 'an explicit cwd does not stick');
    const viaCommand = await start({ command: 'cd /var && sleep 0.2', wait: 10 });
    assert.equal(viaCommand.status, 200, viaCommand.text);
    assert.equal((await exec('pwd')).body.stdout, '/var\n', 'commands keep the sticky cwd too');
    await exec('cd /home/agent');
  });

  it("answers bash's own error for a working directory that does not exist", async () => {
    const res = await exec('echo should not run', { cwd: '/no/such/dir' });
    assert.notEqual(res.body.exit_code, 0);
    assert.equal(res.body.stdout, '');
    assert.match(res.body.stderr, /cd: \/no\/such\/dir: No such file or directory/);
  });

  it('kills the whole process tree at the timeout', async () => {
    const res = await exec("bash -c 'sleep 61' & sleep 60; echo never", { timeout: 2 });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.timed_out, true);
    assert.equal(res.body.status, 'timed_out');
    assert.equal(res.body.exit_code, 137);
    const left = await exec('ps -eo args | grep -c "[s]leep 6[01]" || true');
    assert.equal(left.body.stdout.trim(), '0');
  });

  it('answers when the shell exits though a background process holds the output, and the next command is not slowed', async () => {
    const res = await exec('sleep 30 & echo started');
    assert.equal(res.body.stdout, 'started\n');
    assert.ok(res.body.duration_ms < 2_000, `took ${res.body.duration_ms} ms`);
    const next = await exec('true');
    assert.ok(next.body.duration_ms < 2_000, `the next command took ${next.body.duration_ms} ms`);
    assert.equal((await exec('pgrep -c -f "^sleep 30"')).body.stdout.trim(), '1', 'what the command left in the background keeps running');
  });

  it('answers a huge output head and tail (1 MiB per stream at most), with flags, real byte counts, and all of it by offsets', async () => {
    const res = await exec('head -c 5000000 /dev/zero | tr "\\0" a; echo; head -c 3000000 /dev/zero | tr "\\0" e >&2');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.stdout_truncated, true);
    assert.equal(res.body.stderr_truncated, true);
    assert.equal(res.body.stdout_bytes, 5_000_001);
    assert.equal(res.body.stderr_bytes, 3_000_000);
    assert.ok(res.body.stdout.startsWith('aaaa') && res.body.stdout.endsWith('aaaa\n'));
    assert.match(res.body.stdout, /bytes truncated/);
    assert.ok(Buffer.byteLength(res.body.stdout) <= 1024 * 1024 + 100);
    const all = await follow(res.body.command_id);
    assert.equal(all.stdout.length, 5_000_001);
    assert.equal(all.stderr.length, 3_000_000);
  });

  it('runs 20 commands at once, each to its end with its own output (SSM runs 5 at a time; the rest wait for a worker)', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => exec(`sleep 0.3; echo run-${i}`)));
    for (const [i, res] of results.entries()) {
      // 200 when it ended within the API's wait; on a loaded machine (twenty Lambda environments starting, the
      // SSM agent's five workers taking them in turn) the API may answer 202 first, as it does for any command
      // still running when its time is up: the command is then followed to its end.
      assert.ok(res.status === 200 || res.status === 202, res.text);
      let final = res.body;
      let stdout: string = res.body.stdout;
      if (res.status === 202) {
        const all = await follow(res.body.command_id);
        final = all.final;
        stdout = all.stdout.toString();
      }
      assert.equal(final.status, 'exited', JSON.stringify(final));
      assert.equal(final.exit_code, 0);
      assert.equal(stdout, `run-${i}\n`);
    }
  });

  it('answers 202 for a command longer than the API may wait, and the command is followed to its end with all its output', async () => {
    // 40 s: longer than API Gateway allows a request, and still running when /exec answers.
    const started = Date.now();
    const res = await exec('for i in $(seq 1 8); do echo "tick $i"; sleep 5; done; echo done >&2', { timeout: 120 });
    assert.equal(res.status, 202, res.text);
    assert.ok(Date.now() - started < 29_000, 'answered within the gateway budget');
    assert.equal(res.body.status, 'running');
    const all = await follow(res.body.command_id, id, 120_000);
    assert.equal(all.final.status, 'exited');
    assert.equal(all.final.exit_code, 0);
    assert.equal(all.stdout.toString(), Array.from({ length: 8 }, (_, i) => `tick ${i + 1}\n`).join(''));
    assert.equal(all.stderr.toString(), 'done\n');
  });
});

describe('POST /sandboxes/{id}/commands', () => {
  it('answers 202 with the running command, and a line it writes is readable while it runs', async () => {
    const res = await start({ command: 'echo first line; sleep 30; echo last', command_id: 'reads-live' });
    assert.equal(res.status, 202, res.text);
    assert.equal(res.body.command_id, 'reads-live');
    assert.equal(res.body.status, 'running');
    const seen = await waitFor(
      'the first line',
      async () => {
        const g = await get('reads-live', '?wait=5');
        return g.body.stdout === 'first line\n' ? g.body : undefined;
      },
      10_000,
      50,
    );
    assert.equal(seen.status, 'running');
    assert.equal(seen.stdout_offset_next, 11);
    const nothingNew = await get('reads-live', '?stdout_offset=11&wait=1');
    assert.equal(nothingNew.body.stdout, '');
    assert.equal(nothingNew.body.stdout_offset_next, 11);
    await api.call('POST', `/sandboxes/${id}/commands/reads-live/kill`, {});
  });

  it('answers 200 with the whole record when the command ends within wait', async () => {
    const res = await start({ command: 'echo quick', wait: 10 });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.status, 'exited');
    assert.equal(res.body.stdout, 'quick\n');
    assert.match(res.body.command_id, /^cmd-[a-z0-9]{20}$/);
  });

  it('runs one command_id once, even when the same start is sent 5 times at once; another body is 409', async () => {
    const body = { command: 'echo ran >> ~/ran-once.txt; sleep 1', command_id: 'once-only' };
    const answers = await Promise.all(Array.from({ length: 5 }, () => start(body)));
    for (const a of answers) {
      assert.ok([200, 202].includes(a.status), a.text);
      assert.equal(a.body.command_id, 'once-only');
    }
    await follow('once-only');
    assert.equal((await exec('cat ~/ran-once.txt')).body.stdout, 'ran\n');
    const again = await start(body);
    assert.equal(again.status, 200);
    assert.equal((await exec('cat ~/ran-once.txt')).body.stdout, 'ran\n', 'a later retry does not run it again');
    const other = await start({ ...body, command: 'echo other' });
    assert.equal(other.status, 409, other.text);
    assert.equal(other.body.error.code, 'conflict');
  });

  it('reads 50 MB of output back by offsets byte-identical to what the command wrote, stdout and stderr each intact', async () => {
    const command = [
      'head -c 37500000 /dev/urandom | base64 -w 100 | tee /tmp/out.txt',
      'head -c 7500000 /dev/urandom | base64 -w 100 | tee /tmp/err.txt >&2',
      'sha256sum /tmp/out.txt /tmp/err.txt > /tmp/sums',
    ].join('; ');
    const res = await start({ command, command_id: 'fifty-mb', timeout: 300 });
    assert.ok([200, 202].includes(res.status), res.text);
    const all = await follow('fifty-mb', id, 240_000);
    assert.equal(all.final.status, 'exited', JSON.stringify(all.final));
    const sums = (await exec('cat /tmp/sums; rm -f /tmp/out.txt /tmp/err.txt')).body.stdout.split('\n');
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    assert.ok(all.stdout.length > 50_000_000, `stdout is ${all.stdout.length} bytes`);
    assert.equal(sha(all.stdout), sums[0]!.split(' ')[0]);
    assert.equal(sha(all.stderr), sums[1]!.split(' ')[0]);
    assert.equal(all.final.stdout_bytes, all.stdout.length);
    assert.ok(all.reads >= 48, `read in ${all.reads} answers of at most 1 MiB`);
  });

  it('never splits a multi-byte character across answers', async () => {
    // 3-byte characters, 1 MiB answers: 1048576 is not a multiple of 3.
    const res = await start({ command: 'python3 -c "import sys; sys.stdout.write(\'€\' * 700000)"', command_id: 'euros', wait: 20 });
    assert.ok([200, 202].includes(res.status), res.text);
    const all = await follow('euros');
    assert.equal(all.stdout.toString('utf8'), '€'.repeat(700_000));
    assert.ok(!all.stdout.toString('utf8').includes('\uFFFD'));
  });

  it('cuts a stream past COMMAND_OUTPUT_MAX_BYTES and flags it, counting every byte', async () => {
    const res = await start({ command: 'head -c 70000000 /dev/zero | tr "\\0" x', command_id: 'over-cap', timeout: 120 });
    assert.ok([200, 202].includes(res.status), res.text);
    const final = await waitFor(
      'the capped command to end',
      async () => {
        const g = await get('over-cap', '?stdout_offset=67108864&wait=10');
        return ['pending', 'running'].includes(g.body.status) ? undefined : g.body;
      },
      120_000,
    );
    assert.equal(final.stdout_truncated, true);
    assert.equal(final.stdout_bytes, 70_000_000);
    assert.equal(final.stdout_offset_next, 64 * 1024 * 1024, 'stored up to the cap');
  });

  it('lists the commands newest first, paginated', async () => {
    const first = await api.call('GET', `/sandboxes/${id}/commands?limit=2`);
    assert.equal(first.status, 200, first.text);
    assert.equal(first.body.commands.length, 2);
    assert.ok(first.body.next_token);
    const second = await api.call('GET', `/sandboxes/${id}/commands?limit=2&next_token=${first.body.next_token}`);
    assert.equal(second.body.commands.length, 2);
    const all = [...first.body.commands, ...second.body.commands];
    for (let i = 1; i < all.length; i++) assert.ok(all[i - 1].created_at >= all[i].created_at, 'newest first');
    assert.equal(new Set(all.map((c: any) => c.command_id)).size, 4);
  });

  it('answers 404 for another tenant and for a command that does not exist, 400 for bad offsets', async () => {
    assert.equal((await get('no-such-command')).status, 404);
    assert.equal((await get('bad id!')).status, 404);
    assert.equal((await get('euros', '?stdout_offset=-1')).status, 400);
    assert.equal((await get('euros', '?wait=21')).status, 400);
    assert.equal((await start({ command: 'true', command_id: 'has space' })).status, 400);
    assert.equal((await start({ command: 'true', timeout: 86_401 })).status, 400);
  });
});

describe('kill', () => {
  it('kills every process the command started, children that left its group or session included', async () => {
    const command = 'setsid sleep 1001 & nohup sleep 1002 >/dev/null 2>&1 & (setsid bash -c "sleep 1003 & disown" &) ; sleep 1004';
    const res = await start({ command, command_id: 'escapers' });
    assert.equal(res.status, 202, res.text);
    await waitFor('all four sleeps', async () => (await exec('pgrep -c -f "^sleep 100[1-4]" || true')).body.stdout.trim() === '4', 10_000);
    const kill = await api.call('POST', `/sandboxes/${id}/commands/escapers/kill`, {});
    assert.equal(kill.status, 202, kill.text);
    const final = await waitFor(
      'killed',
      async () => {
        const g = await get('escapers');
        return g.body.status === 'killed' ? g.body : undefined;
      },
      15_000,
    );
    assert.equal(final.end_reason, 'kill_requested');
    assert.equal((await exec('pgrep -c -f "^sleep 100[1-4]" || true')).body.stdout.trim(), '0', 'no process is left');
  });

  it('TERM lets the command clean up; a pending command never starts; an ended one stays as it was', async () => {
    await start({ command: 'trap "echo cleaned; exit 0" TERM; sleep 100 & wait', command_id: 'polite' });
    await sleep(500);
    assert.equal((await api.call('POST', `/sandboxes/${id}/commands/polite/kill`, { signal: 'TERM' })).status, 202);
    const final = await waitFor(
      'killed',
      async () => {
        const g = await get('polite');
        return g.body.status === 'killed' ? g.body : undefined;
      },
      20_000,
    );
    assert.equal(final.stdout, 'cleaned\n');
    const ended = await api.call('POST', `/sandboxes/${id}/commands/euros/kill`, {});
    assert.equal(ended.status, 202);
    assert.equal(ended.body.status, 'exited');
    assert.equal((await api.call('POST', `/sandboxes/${id}/commands/euros/kill`, { signal: 'HUP' })).status, 400);
  });
});

describe('stdin', () => {
  const write = (commandId: string, body: Record<string, unknown>) => api.call('POST', `/sandboxes/${id}/commands/${commandId}/stdin`, body);

  it('writes in order by offset: a duplicate or a gap is 409 with the offset expected, eof ends it', async () => {
    const res = await start({ command: 'cat; echo "<eof>"', command_id: 'cat-stdin', stdin: 'first\n', stdin_open: true });
    assert.equal(res.status, 202, res.text);
    assert.equal(res.body.stdin_offset, 6);
    const ok = await write('cat-stdin', { data: 'second\n', offset: 6 });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.body.offset_next, 13);
    const duplicate = await write('cat-stdin', { data: 'second\n', offset: 6 });
    assert.equal(duplicate.status, 409);
    assert.equal(duplicate.body.error.code, 'offset_mismatch');
    assert.equal(duplicate.body.error.expected_offset, 13);
    const gap = await write('cat-stdin', { data: 'later\n', offset: 20 });
    assert.equal(gap.status, 409);
    assert.equal(gap.body.error.expected_offset, 13);
    const unicode = await write('cat-stdin', { data: 'drei €\n', offset: 13 });
    assert.equal(unicode.body.offset_next, 13 + Buffer.byteLength('drei €\n'));
    const eof = await write('cat-stdin', { data: '', offset: unicode.body.offset_next, eof: true });
    assert.equal(eof.status, 200, eof.text);
    const all = await follow('cat-stdin');
    assert.equal(all.stdout.toString(), 'first\nsecond\ndrei €\n<eof>\n');
    assert.equal(all.final.status, 'exited');
    const after = await write('cat-stdin', { data: 'x', offset: eof.body.offset_next });
    assert.equal(after.status, 409);
  });

  it('closes stdin at once unless stdin_open is set', async () => {
    const res = await start({ command: 'cat; echo end', stdin: 'given\n', wait: 10 });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.stdout, 'given\nend\n');
    const closed = await write(res.body.command_id, { data: 'x', offset: 6 });
    assert.equal(closed.status, 409);
    assert.equal((await exec('cat; echo end')).body.stdout, 'end\n', '/exec gives no stdin');
  });
});

describe('commands outlive their sandbox', () => {
  it('keeps history and output readable after destroy, and ending a sandbox ends its commands', async () => {
    const c = await api.create('history-user');
    assert.equal(c.status, 201, c.text);
    const sid = c.body.sandbox_id;
    const done = await api.exec(sid, 'echo kept for later');
    const running = await start({ command: 'sleep 300', command_id: 'ended-with-sandbox' }, sid);
    assert.equal(running.status, 202);
    const d = await api.destroy(sid);
    assert.equal(d.status, 204, d.text);
    const old = await get(done.body.command_id, '', sid);
    assert.equal(old.status, 200);
    assert.equal(old.body.stdout, 'kept for later\n');
    const ended = await get('ended-with-sandbox', '', sid);
    assert.equal(ended.body.status, 'killed');
    assert.equal(ended.body.end_reason, 'sandbox_ended');
    const list = await api.call('GET', `/sandboxes/${sid}/commands`);
    assert.equal(list.body.commands.length, 2);
    const refused = await start({ command: 'true' }, sid);
    assert.equal(refused.status, 409);
  });
});

describe('the exec server: a warm process in each sandbox starts its commands (no docker exec per command)', () => {
  // What a command's process has, printed the same whoever started it; the first line says who did
  // (a docker exec's process has no parent in the sandbox's pid namespace).
  const probe = [
    'echo "started-by=$([ "$PPID" = 0 ] && echo docker-exec || echo exec-server)"',
    'read -r -a st < /proc/$$/stat; echo "own-session-and-group=$(( st[4] == $$ && st[5] == $$ ))"',
    "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|SigBlk|SigIgn):' /proc/self/status",
    'ulimit -a; umask; cat /proc/$$/oom_score_adj; pwd; echo "$OLDPWD"; fds=(/proc/$$/fd/*); echo "fds: ${fds[*]##*/}"',
    "sed 's/cmd-[A-Za-z0-9_-]*/cmd-X/' /proc/$$/cgroup",
    'env | sort',
  ].join('\n');
  const startedBy = (stdout: string) => /^started-by=(.*)$/m.exec(stdout)?.[1];
  const served = () =>
    waitFor(
      "the sandbox's exec server",
      async () => startedBy((await exec('true; echo "started-by=$([ "$PPID" = 0 ] && echo docker-exec || echo exec-server)"')).body.stdout) === 'exec-server',
      20_000,
      100,
    );

  it('gives a command what a docker exec gives it (the server stopped from inside the sandbox stands in for a host without one)', async () => {
    await served();
    const viaServer = await exec(probe, { env: { PROBE_VALUE: 'a b\nc' } });
    assert.equal(viaServer.body.exit_code, 0, viaServer.text);
    assert.equal(startedBy(viaServer.body.stdout), 'exec-server');
    assert.match(viaServer.body.stdout, /^own-session-and-group=1$/m);
    assert.match(viaServer.body.stdout, /^SigIgn:\s+0+$/m, 'no signal ignored');
    assert.match(viaServer.body.stdout, /^PROBE_VALUE=a b$/m);
    // Its oldest process is the server itself: the subshells waiting for running commands (this one's too) stay.
    const stop = await exec("pkill -o -f '^/bin/bash --noprofile --norc -c io='");
    assert.equal(stop.body.exit_code, 0, stop.text);
    const viaDocker = await exec(probe, { env: { PROBE_VALUE: 'a b\nc' } });
    assert.equal(viaDocker.body.exit_code, 0, viaDocker.text);
    assert.equal(startedBy(viaDocker.body.stdout), 'docker-exec');
    const rest = (stdout: string) => stdout.replace(/^started-by=.*\n/, '');
    assert.equal(rest(viaServer.body.stdout), rest(viaDocker.body.stdout));
    // A new server takes over.
    await served();
  });

  it("starts a sandbox's server as its container starts (a cold create, a resume), before its first command", async () => {
    const c = await api.create('commands-server-user');
    assert.equal(c.status, 201, c.text);
    const sid = c.body.sandbox_id as string;
    const serverRuns = (what: string) =>
      waitFor(
        what,
        async () =>
          (await docker.getContainer(sid).top({ ps_args: '-eo pid,args' })).Processes?.some((p: string[]) =>
            p[1]?.startsWith('/bin/bash --noprofile --norc -c io='),
          ),
        20_000,
        100,
      );
    const whoStarts = async () => (await api.exec(sid, 'echo "started-by=$([ "$PPID" = 0 ] && echo docker-exec || echo exec-server)"')).body.stdout;
    try {
      // No command has run in it: a server there was started by the create.
      await serverRuns("the new sandbox's exec server");
      assert.equal(startedBy(await whoStarts()), 'exec-server');
      // Stopped, its container's processes are gone; started again, it gets a server before any command.
      const pause = await api.call('POST', `/sandboxes/${sid}/pause`);
      assert.ok([200, 202].includes(pause.status), pause.text);
      await waitFor('the sandbox to be paused', async () => (await api.get(sid)).body.status === 'paused', 60_000);
      const resume = await api.call('POST', `/sandboxes/${sid}/resume`);
      assert.ok([200, 202].includes(resume.status), resume.text);
      await waitFor('the sandbox to be ready again', async () => (await api.get(sid)).body.status === 'ready', 60_000);
      await serverRuns("the resumed sandbox's exec server");
      assert.equal(startedBy(await whoStarts()), 'exec-server');
    } finally {
      await api.destroy(sid);
    }
  });

  it('keeps commands apart: `kill 0` in one reaches neither another command nor the server', async () => {
    await served();
    const long = await start({ command: 'sleep 2; echo still-here', command_id: 'outlives-kill-0' });
    assert.equal(long.status, 202, long.text);
    const killer = await exec('kill 0; echo not-reached');
    assert.equal(killer.body.exit_code, 143, killer.text);
    assert.equal(killer.body.stdout, '');
    const ended = await follow('outlives-kill-0');
    assert.equal(ended.final.exit_code, 0);
    assert.equal(ended.stdout.toString(), 'still-here\n');
    const next = await exec('echo "started-by=$([ "$PPID" = 0 ] && echo docker-exec || echo exec-server)"');
    assert.equal(startedBy(next.body.stdout), 'exec-server');
  });

  it('reports the exit code of a command whose waiting subshell the sandbox killed (with the server), from its shell', async () => {
    await served();
    const long = await start({ command: 'sleep 2; exit 7', command_id: 'outlives-its-waiter' });
    assert.equal(long.status, 202, long.text);
    // The server and every subshell waiting for a command (this one's own too): none is this sandbox's to rely on.
    const killer = await exec("pkill -f '^/bin/bash --noprofile --norc -c io='; echo killed");
    assert.equal(killer.body.stdout, 'killed\n', killer.text);
    assert.equal(killer.body.exit_code, 0, killer.text);
    const ended = await follow('outlives-its-waiter');
    assert.equal(ended.final.status, 'exited');
    assert.equal(ended.final.exit_code, 7, JSON.stringify(ended.final));
    assert.equal(ended.final.end_detail, undefined);
    // A new server takes over.
    await served();
  });
});

describe('secrets stay out of SSM', () => {
  it('puts no command, env value, stdin or sandbox token in any SSM command text', async () => {
    const c = await api.create('secret-user', { env: { CREATE_SECRET: 'create-secret-value-4242' } });
    const sid = c.body.sandbox_id;
    await api.exec(sid, 'echo command-secret-text-9191', { env: { EXEC_SECRET: 'exec-secret-value-7373' } });
    await start({ command: 'cat >/dev/null; echo started-secret-5151', stdin: 'stdin-secret-6262', stdin_open: true, command_id: 's1' }, sid);
    await api.call('POST', `/sandboxes/${sid}/commands/s1/stdin`, { data: 'more-stdin-secret-8484', offset: 17, eof: true });
    const token = (await api.exec(sid, 'printf %s "$SANDBOX_TOKEN"')).body.stdout;
    assert.match(token, /^sbt_/);
    await api.destroy(sid);
    const ssm = new SSMClient({
      endpoint: stack.ssm.url,
      region: 'us-east-1',
      credentials: { accessKeyId: stack.env.AWS_ACCESS_KEY_ID!, secretAccessKey: stack.env.AWS_SECRET_ACCESS_KEY! },
    });
    const texts: string[] = [];
    let next: string | undefined;
    do {
      const page = await ssm.send(new ListCommandsCommand({ MaxResults: 50, NextToken: next }));
      for (const cmd of page.Commands ?? []) texts.push(JSON.stringify(cmd.Parameters ?? {}));
      next = page.NextToken;
    } while (next);
    ssm.destroy();
    assert.ok(texts.length > 5);
    const all = texts.join('\n');
    for (const secret of [
      'create-secret-value-4242',
      'exec-secret-value-7373',
      'command-secret-text-9191',
      'stdin-secret-6262',
      'more-stdin-secret-8484',
      'started-secret-5151',
      token,
    ]) {
      assert.ok(!all.includes(secret), `SSM command text holds ${secret.slice(0, 12)}...`);
    }
    // Not even encoded: the request arguments are ids (b64 of a small JSON) or S3 keys.
    const decoded = texts.flatMap((t) => [...t.matchAll(/b64:([A-Za-z0-9_-]+)/g)].map((m) => Buffer.from(m[1]!, 'base64url').toString('utf8'))).join('\n');
    for (const secret of ['create-secret-value-4242', 'exec-secret-value-7373', 'command-secret-text-9191', token]) {
      assert.ok(!decoded.includes(secret), `an encoded SSM argument holds ${secret.slice(0, 12)}...`);
    }
  });
});
