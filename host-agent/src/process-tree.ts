/**
 * Kills a process and all its descendants from the host, by host PID, reading
 * parentage from /proc. Used when an exec runs past its timeout: docker has no
 * API to kill an exec, and killing only the shell would leave its children.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Whether a process still exists (signal 0 probes without sending anything; a zombie still does). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The fields of /proc/<pid>/stat after the command name (which may hold spaces and parens): state, ppid, ... */
export function statFields(pid: number | string): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** Parent PID of every process, from /proc/<pid>/stat (comm may contain spaces and parens). */
function parentsByPid(): Map<number, number> {
  const parents = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      parents.set(Number(entry), Number(statFields(entry)[1]));
    } catch {
      // The process exited between readdir and read: nothing to kill.
    }
  }
  return parents;
}

/** `root` and every process below it. */
function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, ppid] of parentsByPid()) {
    const list = children.get(ppid);
    if (list) list.push(pid);
    else children.set(ppid, [pid]);
  }
  const tree: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const pid = queue.pop()!;
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return tree;
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    // ESRCH: it already exited, which is what we want.
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

/**
 * Freezes the tree (SIGSTOP, repeated until no new child appears, so nothing
 * forks out from under us), then SIGKILLs every member. Returns the PIDs hit.
 */
export function killProcessTree(root: number): number[] {
  const stopped = new Set<number>();
  for (let round = 0; round < 20; round += 1) {
    const fresh = processTree(root).filter((pid) => !stopped.has(pid));
    if (fresh.length === 0) break;
    for (const pid of fresh) {
      signal(pid, 'SIGSTOP');
      stopped.add(pid);
    }
  }
  for (const pid of stopped) signal(pid, 'SIGKILL');
  return [...stopped];
}
