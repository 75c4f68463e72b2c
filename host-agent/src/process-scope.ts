/**
 * Processes that must outlive the host daemon: the cold tier's FUSE clients
 * (mount-s3, s3fs). A process started by a systemd service lives in the
 * service's cgroup and is killed with it when the service stops or restarts
 * (KillMode=control-group), which took every cold mount down with a daemon
 * restart. Each mount runs in a scope of its own instead:
 *   - on a systemd host (AWS): `systemd-run --scope` puts it in a transient
 *     scope unit under ephemeral-sandbox-mounts.slice, collected when empty;
 *   - elsewhere (the local stack, CI): a cgroup of its own in the cgroup2
 *     hierarchy (COLD_MOUNT_CGROUP, or ephemeral-sandbox-mounts under the
 *     root), which the process joins before it execs the mount command.
 * The command keeps its argv: nothing is spliced into shell text.
 */
import { existsSync, mkdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { cgroup2Root } from './commands/cgroup';

export interface ScopedCommand {
  file: string;
  args: string[];
}

/** The systemd slice mount scopes are put in (one place to see and account them). */
const mountSlice = 'ephemeral-sandbox-mounts.slice';

/** True when systemd is the service manager (what sd_booted checks). */
function systemdRunning(): boolean {
  return existsSync('/run/systemd/system');
}

/** The cgroup directory mount processes of this host join when there is no systemd. */
function mountCgroupParent(env: NodeJS.ProcessEnv = process.env): string {
  return env.COLD_MOUNT_CGROUP || join(cgroup2Root(), 'ephemeral-sandbox-mounts');
}

/**
 * `file args` wrapped so it runs in a scope named `name` (letters, digits, `-`),
 * outside the caller's service.
 *
 * @example scopedCommand('mount-s3', ['bucket', '/mnt/x'], 'cold-3f2a') // systemd-run --scope ... -- mount-s3 bucket /mnt/x
 */
export function scopedCommand(file: string, args: string[], name: string, o: { systemd?: boolean; cgroupParent?: string } = {}): ScopedCommand {
  if (!/^[A-Za-z0-9-]{1,64}$/.test(name)) throw new Error(`scope name "${name}" must be 1-64 letters, digits or dashes`);
  if (o.systemd ?? systemdRunning()) {
    return {
      file: 'systemd-run',
      args: ['--scope', '--quiet', '--collect', `--unit=ephemeral-sandbox-${name}`, `--slice=${mountSlice}`, '--', file, ...args],
    };
  }
  const dir = join(o.cgroupParent ?? mountCgroupParent(), name);
  mkdirSync(dir, { recursive: true });
  // $0 is the cgroup's procs file: the shell moves itself there, then becomes the command.
  return { file: '/bin/sh', args: ['-c', 'echo $$ > "$0" && exec "$@"', join(dir, 'cgroup.procs'), file, ...args] };
}

/** Removes the cgroup of a scope whose processes are gone (systemd collects its own scopes). Idempotent. */
export function removeScope(name: string, o: { systemd?: boolean; cgroupParent?: string } = {}): void {
  if (o.systemd ?? systemdRunning()) return;
  try {
    rmdirSync(join(o.cgroupParent ?? mountCgroupParent(), name));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // ENOENT: gone already; EBUSY: a process is still in it (a lazily detached mount finishing): the next removal takes it.
    if (code !== 'ENOENT' && code !== 'EBUSY') throw error;
  }
}
