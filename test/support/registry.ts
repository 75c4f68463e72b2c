/**
 * A real image registry on loopback for tests: Debian's docker-registry (the
 * CNCF distribution server, installed by scripts/setup-host.sh), no
 * credentials, filesystem storage in a directory of its own. The engine
 * treats 127.0.0.0/8 registries as insecure (plain HTTP) by default.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface LocalRegistry {
  /** `127.0.0.1:<port>` */
  host: string;
  /** Tags `source` as `<host>/<name>:<tag>`, pushes it, removes the local tag; answers the pushed reference and its digest reference. */
  push(source: string, name: string, tag: string): Promise<{ ref: string; digestRef: string }>;
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export async function docker(...args: string[]): Promise<string> {
  return (await run('docker', args, { maxBuffer: 16 * 1024 * 1024 })).stdout.trim();
}

export async function startLocalRegistry(): Promise<LocalRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'registry-'));
  const port = await freePort();
  const config = join(dir, 'registry.yml');
  await writeFile(
    config,
    ['version: 0.1', 'storage:', `  filesystem: { rootdirectory: ${join(dir, 'data')} }`, 'http:', `  addr: 127.0.0.1:${port}`, ''].join('\n'),
  );
  const child = spawn('docker-registry', ['serve', config], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  for (let i = 0; ; i++) {
    if (
      await fetch(`http://127.0.0.1:${port}/v2/`)
        .then((r) => r.ok)
        .catch(() => false)
    )
      break;
    if (i > 100 || child.exitCode !== null) throw new Error('the local registry (docker-registry) did not start; run scripts/setup-host.sh');
    await new Promise((r) => setTimeout(r, 100));
  }
  const host = `127.0.0.1:${port}`;
  return {
    host,
    async push(source, name, tag) {
      const ref = `${host}/${name}:${tag}`;
      await docker('tag', source, ref);
      await docker('push', '-q', ref);
      const digests = JSON.parse(await docker('image', 'inspect', '--format', '{{json .RepoDigests}}', ref)) as string[];
      const digestRef = digests.find((d) => d.startsWith(`${host}/${name}@`));
      if (!digestRef) throw new Error(`no digest for ${ref} after the push`);
      await docker('rmi', ref);
      return { ref, digestRef };
    },
    async close() {
      child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
