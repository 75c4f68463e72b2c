/**
 * The host's own figures, published by its daemon as metrics (EMF lines, with
 * the HostId dimension) after every reconcile pass: sandboxes it holds,
 * creates still pending, commands running, and CPU and memory allocated to
 * sandboxes and still free. A paused sandbox holds its files, not CPU or memory.
 */
import { cpus, totalmem } from 'node:os';
import { emitMetrics } from '../../lambdas/shared/metrics';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';

export interface HostFigures {
  sandboxes: number;
  pendingCreates: number;
  commandsRunning: number;
  cpuAllocated: number;
  cpuFree: number;
  memoryAllocatedMb: number;
  memoryFreeMb: number;
}

/** What the host's live sandboxes take of its CPUs and memory. */
function hostFigures(
  live: readonly Pick<SandboxRecord, 'status' | 'config'>[],
  host: { cpus: number; memoryMb: number; commandsRunning: number },
): HostFigures {
  const running = live.filter((r) => r.status !== 'paused');
  const cpuAllocated = running.reduce((sum, r) => sum + (r.config?.cpu ?? 0), 0);
  const memoryAllocatedMb = running.reduce((sum, r) => sum + (r.config?.memory_mb ?? 0), 0);
  return {
    sandboxes: live.length,
    pendingCreates: live.filter((r) => r.status === 'creating').length,
    commandsRunning: host.commandsRunning,
    cpuAllocated,
    cpuFree: Math.max(0, host.cpus - cpuAllocated),
    memoryAllocatedMb,
    memoryFreeMb: Math.max(0, host.memoryMb - memoryAllocatedMb),
  };
}

export function publishHostFigures(hostId: string, live: readonly Pick<SandboxRecord, 'status' | 'config'>[], commandsRunning: number): HostFigures {
  const f = hostFigures(live, { cpus: cpus().length, memoryMb: Math.floor(totalmem() / 1024 / 1024), commandsRunning });
  emitMetrics(
    { HostId: hostId },
    {
      HostSandboxes: f.sandboxes,
      HostPendingCreates: f.pendingCreates,
      HostCommandsRunning: f.commandsRunning,
      HostCpuAllocated: f.cpuAllocated,
      HostCpuFree: f.cpuFree,
      HostMemoryAllocatedMb: f.memoryAllocatedMb,
      HostMemoryFreeMb: f.memoryFreeMb,
    },
  );
  return f;
}
