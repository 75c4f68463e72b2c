/**
 * What this host can allocate to sandboxes (placement.ts allocatableResources
 * decides; this reads the machine): its CPUs, its memory, its state volume,
 * and the settings of host.env.
 */
import { statfsSync } from 'node:fs';
import { availableParallelism, totalmem } from 'node:os';
import { allocatableResources, type Resources } from '../../lambdas/shared/placement';

function number(env: NodeJS.ProcessEnv, name: string, fallback: number | undefined): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got "${raw}"`);
  return n;
}

/** Size of the file system holding `dir`, in MB. */
function fileSystemMb(dir: string): number {
  const s = statfsSync(dir);
  return Math.floor((s.blocks * s.bsize) / (1024 * 1024));
}

/** What a host holds back when host.env says nothing (the fleet simulation sizes its hosts with the same). */
export const hostResourceDefaults = {
  cpuOvercommit: 1,
  // Docker, the daemon, the SSM agent and one FUSE client per cold tier.
  reservedMemoryMb: 768,
  reservedDiskMb: 1024,
} as const;

/**
 * The host's allocatable resources. Settings (host.env): HOST_SLOTS (most
 * sandboxes at once), HOST_CPU_OVERCOMMIT (1), HOST_RESERVED_MEMORY_MB (768:
 * Docker, the daemon, the SSM agent and one FUSE client per cold tier),
 * HOST_RESERVED_DISK_MB (1024); HOST_ALLOCATABLE_CPU / _MEMORY_MB / _DISK_MB
 * replace what is measured (several local hosts share one machine).
 */
export function hostResources(stateDir: string, slots: number, env: NodeJS.ProcessEnv = process.env): Resources {
  const cpu = number(env, 'HOST_ALLOCATABLE_CPU', undefined);
  const memoryMb = number(env, 'HOST_ALLOCATABLE_MEMORY_MB', undefined);
  const diskMb = number(env, 'HOST_ALLOCATABLE_DISK_MB', undefined);
  return allocatableResources(
    {
      cpus: availableParallelism(),
      memoryMb: Math.floor(totalmem() / (1024 * 1024)),
      stateDiskMb: diskMb === undefined ? fileSystemMb(stateDir) : 0,
    },
    {
      cpuOvercommit: number(env, 'HOST_CPU_OVERCOMMIT', hostResourceDefaults.cpuOvercommit)!,
      reservedMemoryMb: number(env, 'HOST_RESERVED_MEMORY_MB', hostResourceDefaults.reservedMemoryMb)!,
      reservedDiskMb: number(env, 'HOST_RESERVED_DISK_MB', hostResourceDefaults.reservedDiskMb)!,
      maxSandboxes: slots,
    },
    { cpu, memoryMb, diskMb },
  );
}
