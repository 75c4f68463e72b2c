/**
 * The host's state directory as a shared mount point: sandboxes bind their
 * cold tier from below it with `rslave` propagation (create.ts), so a mount
 * the host makes there after the container started (a cold tier mounted again
 * after its FUSE client died) reaches the container. Docker refuses such a
 * bind unless the source sits on a shared (or slave) mount.
 */
import { execFile } from 'node:child_process';
import { readFile, realpath } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

interface MountInfo {
  mountPoint: string;
  optionalFields: string[];
}

async function mountInfo(): Promise<MountInfo[]> {
  const decode = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
  return (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const fields = line.split(' ');
      const separator = fields.indexOf('-');
      return { mountPoint: decode(fields[4] ?? ''), optionalFields: fields.slice(6, separator < 0 ? undefined : separator) };
    });
}

const sharedChecked = new Set<string>();

/**
 * Makes `dir` a shared mount point (bound onto itself first when it is a
 * plain directory), so Docker accepts `rslave` binds from below it and mounts
 * made there later reach the containers. Idempotent; on AWS the state volume
 * is a mount of its own and systemd makes mounts shared already.
 */
export async function ensureSharedMount(dir: string): Promise<'already' | 'made'> {
  const path = await realpath(dir);
  if (sharedChecked.has(path)) return 'already';
  const entries = (await mountInfo()).filter((m) => m.mountPoint === path);
  // The last entry for a path is the one on top.
  const top = entries.at(-1);
  if (top?.optionalFields.some((f) => f.startsWith('shared:'))) {
    sharedChecked.add(path);
    return 'already';
  }
  try {
    if (!top) await run('mount', ['--bind', path, path]);
    await run('mount', ['--make-shared', path]);
  } catch (error) {
    const e = error as { stderr?: string; message?: string };
    throw new Error(`cannot make ${path} a shared mount (the host-agent must run as root): ${(e.stderr || e.message || '').trim()}`);
  }
  sharedChecked.add(path);
  return 'made';
}
