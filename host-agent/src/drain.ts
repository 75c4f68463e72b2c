/**
 * A host leaving the fleet drains before it goes: out of placement first
 * (draining), then every sandbox on it ends the graceful way (its home synced
 * to S3, its commands closed) with `stop_reason: host_draining`, a few at a
 * time (a paused one is not ended: its state goes to S3 and it leaves the
 * host, to be placed anywhere at its next start; relocate.ts), while the termination lifecycle action is kept alive with heartbeats;
 * then the action is completed and Auto Scaling terminates the instance. A
 * drain that runs out of time completes the action anyway (the machine goes;
 * what did not end is found lost by the reaper). Started by the drain verb
 * (the fleet events consumer, over SSM) or by the daemon seeing its host
 * marked draining at a heartbeat, whichever comes first; once per host.
 */
import { completeLifecycleAction, heartbeatLifecycleAction } from '../../lambdas/shared/fleet';
import { getHost, markHostDraining } from '../../lambdas/shared/host-store';
import { logger } from '../../lambdas/shared/logger';
import { isTerminal } from '../../lambdas/shared/sandbox-state';
import { getSandbox, liveSandboxesOnHost } from '../../lambdas/shared/sandbox-store';
import { beginShutdown, storageFor } from '../../lambdas/shared/sandboxes';
import { drainHookHeartbeatTimeoutSeconds } from './service';
import { encodeInline } from '../../contract/host-protocol';
import { runHostAgent, type DaemonRuntime } from './invocation';
import { applyEnvFile, loadHostConfig } from './config';
import { DockerClient } from './docker';
import { movePausedOut } from './relocate';
import type { SandboxRecord } from '../../lambdas/shared/sandbox-record';

export interface DrainReport {
  ended: string[];
  /** Paused sandboxes moved off the host (their state in S3; their next start places them elsewhere). */
  moved: string[];
  failed: { sandboxId: string; error: string }[];
  /** Live sandboxes still on the host when the drain finished (it ran out of time). */
  left: string[];
  lifecycleAction: 'done' | 'no_group' | 'no_action' | 'failed';
  heartbeats: number;
  ms: number;
}

export interface DrainSettings {
  hostId: string;
  /** The termination hook's name (DRAIN_LIFECYCLE_HOOK); undefined: no hook to heartbeat or complete. */
  hookName: string | undefined;
  /** Sandboxes ended at once. @default 4 */
  concurrency?: number;
  /** @default a third of drainHookHeartbeatTimeoutSeconds */
  hookHeartbeatMs?: number;
}

/** One drain per daemon: the first request starts it, later ones join it. */
export class HostDrain {
  private running: Promise<DrainReport> | undefined;

  constructor(
    private readonly s: DrainSettings,
    private readonly runtime: DaemonRuntime,
  ) {}

  get active(): boolean {
    return this.running !== undefined;
  }

  /** Starts the drain unless it runs already; `started` says which. */
  start(reason: string, deadlineAt: number): { started: boolean; done: Promise<DrainReport> } {
    if (this.running) return { started: false, done: this.running };
    const run = this.run(reason, deadlineAt);
    this.running = run;
    // A drain that failed half-way may be started again (the next heartbeat does); one that finished stays finished.
    run.catch((err) => {
      logger.error('drain: failed; the daemon\u2019s next heartbeat starts it again', { hostId: this.s.hostId, err });
      if (this.running === run) this.running = undefined;
    });
    return { started: true, done: run };
  }

  private async run(reason: string, deadlineAt: number): Promise<DrainReport> {
    const started = Date.now();
    const hostId = this.s.hostId;
    // Out of placement before anything else: no create may land here from now on.
    const moved = await markHostDraining(hostId, reason, deadlineAt);
    const host = moved ?? (await getHost(hostId));
    logger.warn('drain: host draining', { hostId, reason, deadline: new Date(deadlineAt).toISOString(), status: host?.status });

    let heartbeats = 0;
    const every = this.s.hookHeartbeatMs ?? (drainHookHeartbeatTimeoutSeconds * 1000) / 3;
    const timer = this.s.hookName
      ? setInterval(() => {
          void heartbeatLifecycleAction(hostId, this.s.hookName!)
            .then((outcome) => {
              if (outcome === 'done') heartbeats++;
            })
            .catch((err) => logger.error('drain: lifecycle heartbeat failed; the next one retries', { hostId, err }));
        }, every)
      : undefined;

    const report: DrainReport = { ended: [], moved: [], failed: [], left: [], lifecycleAction: 'no_action', heartbeats: 0, ms: 0 };
    try {
      const queue = await liveSandboxesOnHost(hostId);
      const worker = async () => {
        for (let next = queue.shift(); next; next = queue.shift()) {
          if (Date.now() >= deadlineAt) return;
          try {
            const outcome = await this.settleSandbox(next.sandbox_id, reason);
            if (outcome !== 'later') report[outcome].push(next.sandbox_id);
          } catch (err) {
            report.failed.push({ sandboxId: next.sandbox_id, error: (err as Error).message });
            logger.error('drain: a sandbox did not end', { hostId, sandboxId: next.sandbox_id, err });
          }
        }
      };
      await Promise.all(Array.from({ length: this.s.concurrency ?? 4 }, worker));
      // Creates that were on their way here when the host started draining end as they land; wait for them (bounded).
      while (Date.now() < deadlineAt) {
        const live = await liveSandboxesOnHost(hostId);
        if (live.length === 0) break;
        for (const r of live) {
          if (report.ended.includes(r.sandbox_id) || report.moved.includes(r.sandbox_id)) continue;
          const outcome = await this.settleSandbox(r.sandbox_id, reason).catch(() => 'later' as const);
          if (outcome !== 'later') report[outcome].push(r.sandbox_id);
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
      report.left = (await liveSandboxesOnHost(hostId)).map((r) => r.sandbox_id);
    } finally {
      clearInterval(timer);
    }
    report.heartbeats = heartbeats;
    if (this.s.hookName) {
      try {
        report.lifecycleAction = await completeLifecycleAction(hostId, this.s.hookName, 'CONTINUE');
      } catch (err) {
        // Unanswered, the hook times out after its heartbeat timeout and goes ahead (CONTINUE) on its own.
        report.lifecycleAction = 'failed';
        logger.error('drain: could not complete the lifecycle action; it times out to CONTINUE', { hostId, err });
      }
    }
    report.ms = Date.now() - started;
    logger.warn('drain: finished', { hostId, ...report });
    return report;
  }

  /**
   * A paused sandbox is moved off the host (relocate.ts: kept, not ended);
   * one being stopped or started is left for the next pass (it settles in
   * seconds); any other is ended. 'later' when nothing was done yet.
   */
  private async settleSandbox(sandboxId: string, reason: string): Promise<'ended' | 'moved' | 'later'> {
    const r = await getSandbox(sandboxId);
    if (!r || isTerminal(r.status)) return 'later';
    if (r.status === 'pausing' || r.status === 'resuming') return 'later';
    if (r.status === 'paused') {
      // Serialized with the verbs on this sandbox: a start that reached this host first runs, then the move sees it is no longer paused.
      const moved = await this.runtime.serialize(sandboxId, async () => {
        const current = await getSandbox(sandboxId);
        if (current?.status !== 'paused' || current.host_id !== this.s.hostId) return false;
        applyEnvFile();
        const config = loadHostConfig();
        return movePausedOut(current, this.s.hostId, config, new DockerClient(config.dockerSocket));
      });
      if (moved) return 'moved';
      // A start won the race: it runs here now and ends with the others at the next pass.
      return 'later';
    }
    return (await this.endSandbox(r, reason)) ? 'ended' : 'later';
  }

  /** Ends one sandbox the graceful way, through the same serialized destroy verb SSM would run. */
  private async endSandbox(r: SandboxRecord, reason: string): Promise<boolean> {
    const sandboxId = r.sandbox_id;
    if (r.status !== 'shutting_down') {
      // Someone else may have started ending it first: then their reason stands and the destroy below still finishes it here.
      await beginShutdown(r, 'host_draining', `its host ${this.s.hostId} left the fleet (${reason})`);
    }
    const envelope = await runHostAgent(['destroy', encodeInline({ sandboxId, graceful: true, storage: storageFor(r.tenant_id, r.user_id) })], this.runtime);
    if (!envelope.ok) throw new Error(`destroy ${sandboxId}: ${envelope.error.code}: ${envelope.error.message}`);
    const after = await getSandbox(sandboxId);
    return after !== undefined && isTerminal(after.status);
  }
}
