/**
 * sbx: the command line of Ephemeral Sandbox, on the SDK.
 *
 *   sbx create [--user U] [--cpu N] [--memory MB] [--ttl S]   sbx ls [--user U] [--status S]
 *   sbx info <id>    sbx exec <id> [--cwd DIR] [--env K=V] -- <cmd...>    sbx logs <id> <command_id> [--follow]
 *   sbx cp <local> <id>:<path>    sbx cp <id>:<path> <local>    sbx pause|resume|rm <id>
 *   (sbx stop|start: the deprecated names of pause|resume)
 *   sbx keys create|list|revoke --tenant T ...   (key administration: the account's credentials, not an API key)
 *
 * --json on every command prints the API's answer as JSON. The key and URL come from
 * SANDBOX_API_KEY / SANDBOX_API_URL, else ~/.config/ephemeral-sandbox/config.json ({"apiKey", "apiUrl"}).
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { CommandHandle } from './commands.js';
import { SandboxApiError, SandboxError } from './errors.js';
import type { Progress } from './files.js';
import { ApiClient, type ClientOptions } from './http.js';
import { Sandbox, shellQuote } from './sandbox.js';
import type { SandboxInfo } from './types.js';

const usage = `usage: sbx <command> [options]

  create [--user U] [--cpu N] [--memory MB] [--ttl SECONDS]   create a sandbox, print its id
  ls [--user U] [--status S]                                  list sandboxes
  info <id>                                                   one sandbox
  exec <id> [--cwd DIR] [--env K=V]... -- <cmd> [args...]     run a command, output live; exits with its status
                                                              (one argument is shell text; several are quoted each)
  logs <id> <command_id> [--follow]                           a command's output (--follow until it ends)
  cp <local> <id>:<path> | cp <id>:<path> <local>             copy a file or directory in or out (progress on a terminal)
  pause <id> | resume <id>                                    pause (frees CPU and memory, keeps every file), resume
                                                              (stop and start: deprecated names of pause and resume)
  rm <id> [--force]                                           destroy: end the sandbox (--force: not graceful)
  keys create|list|revoke --tenant T [...]                    tenant API keys (sbx keys --help); uses the local stack's
                                                              state or the AWS account's credentials, not an API key

  --json      print the API's answers as JSON
  config      SANDBOX_API_KEY and SANDBOX_API_URL, or ~/.config/ephemeral-sandbox/config.json {"apiKey", "apiUrl"}
`;

interface Parsed {
  positional: string[];
  flags: Map<string, string[]>;
  rest: string[];
}

const booleanFlags = new Set(['json', 'follow', 'force', 'help']);

export function parseArgs(argv: readonly string[]): Parsed {
  const positional: string[] = [];
  const flags = new Map<string, string[]>();
  let rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      rest = argv.slice(i + 1);
      break;
    }
    if (a.startsWith('--')) {
      const [name, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
      const value = booleanFlags.has(name) ? (inline ?? 'true') : (inline ?? argv[++i]);
      if (value === undefined) throw new SandboxError(`--${name} needs a value`);
      flags.set(name, [...(flags.get(name) ?? []), value]);
    } else positional.push(a);
  }
  return { positional, flags, rest };
}

/** ~/.config/ephemeral-sandbox/config.json: none is fine (the environment alone); one that cannot be read is an error naming it. */
function configFile(): { apiKey?: string; apiUrl?: string } {
  const path = join(homedir(), '.config', 'ephemeral-sandbox', 'config.json');
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new SandboxError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let file: unknown;
  try {
    file = JSON.parse(text);
  } catch (err) {
    throw new SandboxError(`${path} is not JSON (${(err as Error).message}); write it as {"apiKey": "...", "apiUrl": "..."}`);
  }
  const { apiKey, apiUrl } = (file ?? {}) as Record<string, unknown>;
  if (
    typeof file !== 'object' ||
    Array.isArray(file) ||
    (apiKey !== undefined && typeof apiKey !== 'string') ||
    (apiUrl !== undefined && typeof apiUrl !== 'string')
  ) {
    throw new SandboxError(`${path} must be an object with string "apiKey" and "apiUrl"`);
  }
  return { ...(apiKey ? { apiKey } : {}), ...(apiUrl ? { apiUrl } : {}) };
}

function clientOptions(): ClientOptions {
  // The environment wins over the file, value by value.
  const file = process.env.SANDBOX_API_KEY && process.env.SANDBOX_API_URL ? {} : configFile();
  const apiKey = process.env.SANDBOX_API_KEY ?? file.apiKey;
  const apiUrl = process.env.SANDBOX_API_URL ?? file.apiUrl;
  if (!apiKey || !apiUrl) {
    throw new SandboxError(
      'no API key or URL: set SANDBOX_API_KEY and SANDBOX_API_URL (npm start prints both), or write them to ~/.config/ephemeral-sandbox/config.json as {"apiKey": "...", "apiUrl": "..."}',
    );
  }
  return { apiKey, apiUrl };
}

function line(info: SandboxInfo): string {
  return [info.sandbox_id, info.status.padEnd(13), info.user_id.padEnd(20), info.created_at].join('  ');
}

function progressBar(label: string): ((p: Progress) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  return ({ bytes, total }) => {
    const width = 30;
    const done = total ? Math.round((bytes / total) * width) : width;
    const mib = (n: number) => (n / 1048576).toFixed(1);
    process.stderr.write(`\r${label} [${'#'.repeat(done)}${' '.repeat(width - done)}] ${mib(bytes)}/${mib(total)} MiB`);
    if (bytes >= total) process.stderr.write('\n');
  };
}

function need(p: Parsed, n: number, what: string): string[] {
  if (p.positional.length < n + 1) throw new SandboxError(`missing ${what}\n\n${usage}`);
  return p.positional.slice(1);
}

export async function main(argv: readonly string[]): Promise<number> {
  const p = parseArgs(argv);
  const command = p.positional[0];
  const json = p.flags.has('json');
  const out = (value: unknown, text: string) => process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : text + '\n');
  if (command === 'keys') {
    // Loaded only here: it bundles the AWS SDK clients the other commands never need.
    const keys = (await import(new URL('./keys.js', import.meta.url).href)) as { runKeys(argv: readonly string[]): Promise<number> };
    return keys.runKeys(argv.slice(argv.indexOf('keys') + 1));
  }
  if (!command || command === 'help' || p.flags.has('help')) {
    process.stdout.write(usage);
    return command ? 0 : 2;
  }
  const flag = (name: string) => p.flags.get(name)?.at(-1);
  const num = (name: string) => {
    const v = flag(name);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new SandboxError(`--${name} must be a number, not "${v}"`);
    return n;
  };
  const options = clientOptions();
  switch (command) {
    case 'create': {
      const config = { cpu: num('cpu'), memory_mb: num('memory'), ttl_seconds: num('ttl') };
      const sbx = await Sandbox.create({
        ...options,
        userId: flag('user') ?? process.env.SANDBOX_USER_ID ?? 'default',
        config: JSON.parse(JSON.stringify(config)),
      });
      out(sbx.info, sbx.sandboxId);
      return 0;
    }
    case 'ls': {
      const list = await Sandbox.list({ ...options, userId: flag('user'), status: flag('status') as SandboxInfo['status'] | undefined });
      out(list, list.map(line).join('\n') || '(no sandboxes)');
      return 0;
    }
    case 'info': {
      const [id] = need(p, 1, '<id>');
      const sbx = await Sandbox.connect(id as string, options);
      out(sbx.info, JSON.stringify(sbx.info, null, 2));
      return 0;
    }
    case 'pause':
    case 'resume':
    case 'stop': // deprecated name of pause
    case 'start': // deprecated name of resume
    case 'rm': {
      const [id] = need(p, 1, '<id>');
      const sbx = await Sandbox.connect(id as string, options);
      if (command === 'pause' || command === 'stop') await sbx.pause();
      else if (command === 'resume' || command === 'start') await sbx.resume();
      else await sbx.destroy({ graceful: !p.flags.has('force') });
      const info = await sbx.getInfo().catch(() => sbx.info);
      out(info, `${id} ${info?.status ?? 'ended'}`);
      return 0;
    }
    case 'exec': {
      const [id] = need(p, 1, '<id>');
      if (p.rest.length === 0) throw new SandboxError(`missing the command after --\n\n${usage}`);
      const text = p.rest.length === 1 ? (p.rest[0] as string) : p.rest.map(shellQuote).join(' ');
      const env = Object.fromEntries((p.flags.get('env') ?? []).map((kv) => [kv.split('=')[0], kv.slice(kv.indexOf('=') + 1)]));
      const sbx = await Sandbox.connect(id as string, options);
      const handle = await sbx.commands.run(text, {
        background: true,
        ...(flag('cwd') ? { cwd: flag('cwd') } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(json ? {} : { onStdout: (s: string) => process.stdout.write(s), onStderr: (s: string) => process.stderr.write(s) }),
      });
      // Ctrl-C kills the remote command (and everything it started), then exits 130 like a shell.
      let interrupted = false;
      const onInt = () => {
        if (interrupted) process.exit(130);
        interrupted = true;
        process.stderr.write(`\nsbx: killing ${handle.id}...\n`);
        handle.kill().catch((err: Error) => process.stderr.write(`sbx: kill failed: ${err.message}\n`));
      };
      process.on('SIGINT', onInt);
      try {
        const result = await handle.wait();
        if (json) out(result, '');
        if (interrupted) return 130;
        return result.exitCode ?? (result.status === 'timed_out' ? 124 : 137);
      } finally {
        process.off('SIGINT', onInt);
      }
    }
    case 'logs': {
      const [id, commandId] = need(p, 2, '<id> <command_id>');
      const client = new ApiClient(options);
      const handle = new CommandHandle(client, id as string, commandId as string, {
        ...(json ? {} : { onStdout: (s: string) => process.stdout.write(s), onStderr: (s: string) => process.stderr.write(s) }),
      });
      if (p.flags.has('follow')) {
        const result = await handle.wait();
        if (json) out(result, '');
        return 0;
      }
      // Everything written so far, page by page, without waiting for more.
      for (;;) {
        const { progressed } = await handle.poll(0);
        if (!progressed) break;
      }
      if (json) out(handle.info, '');
      return 0;
    }
    case 'cp': {
      const [from, to] = need(p, 2, '<from> <to>');
      const remote = (s: string) => (/^sbx-[a-z0-9]{20}:/.exec(s) ? { id: s.slice(0, s.indexOf(':')), path: s.slice(s.indexOf(':') + 1) } : undefined);
      const src = remote(from as string);
      const dst = remote(to as string);
      if (!!src === !!dst) throw new SandboxError('cp copies between this machine and a sandbox: one side is <id>:<path>');
      const sbx = await Sandbox.connect((src ?? dst)!.id, options);
      const onProgress = progressBar(`${from} -> ${to}`);
      // Directories travel as tar.gz, unpacked on the other side.
      const result = dst
        ? statSync(from as string).isDirectory()
          ? await sbx.files.uploadDirectory(from as string, dst.path, { mkdirs: true, onProgress })
          : await sbx.files.upload(from as string, dst.path, { mkdirs: true, onProgress })
        : (await sbx.files.stat(src!.path)).type === 'dir'
          ? await sbx.files.downloadDirectory(src!.path, to as string, { onProgress })
          : await sbx.files.download(src!.path, to as string, { onProgress });
      out(result, `${result.size} bytes, sha256 ${result.sha256}`);
      return 0;
    }
    default:
      throw new SandboxError(`unknown command "${command}"\n\n${usage}`);
  }
}

/** Runs the CLI: the exit status is the command's own for exec, 1 for an error (said on stderr with what to do). */
export async function run(argv: readonly string[]): Promise<void> {
  try {
    process.exitCode = await main(argv);
  } catch (err) {
    const message =
      err instanceof SandboxApiError && (err.status === 401 || err.status === 403)
        ? `${err.message}\n(check SANDBOX_API_KEY: npm start prints the local key; npm run keys -- create makes one)`
        : err instanceof SandboxApiError && err.code === 'not_found'
          ? `${err.message}\n(sbx ls lists your sandboxes)`
          : (err as Error).message;
    process.stderr.write(`sbx: ${message}\n`);
    process.exitCode = 1;
  }
}
