/**
 * The commands the local SSM endpoint remembers, as SSM keeps them for a
 * while after they end: one place that knows which invocation a read may see
 * (none before `visibleAt`, SSM's eventual consistency) and when a finished
 * command is forgotten.
 */
import { isTerminal, type Invocation } from './invocation';

export class CommandStore {
  /** commandId -> invocations, one per instance, in the order SendCommand named them. */
  private readonly commands = new Map<string, Invocation[]>();
  private lastSweep = 0;

  /** `ttlMs`: how long a finished command stays queryable. */
  constructor(private readonly ttlMs: number) {}

  add(commandId: string, invocations: Invocation[]): void {
    this.commands.set(commandId, invocations);
  }

  get(commandId: string): Invocation[] | undefined {
    return this.commands.get(commandId);
  }

  /** The invocation a read finds at `now`: undefined until it is visible. */
  visible(commandId: string, instanceId: string, now: number): Invocation | undefined {
    const inv = this.commands.get(commandId)?.find((i) => i.instanceId === instanceId);
    return inv && now >= inv.visibleAt ? inv : undefined;
  }

  /** Every command with its invocations. */
  entries(): [string, Invocation[]][] {
    return [...this.commands.entries()];
  }

  /** Every invocation of every command. */
  invocations(): Invocation[] {
    return [...this.commands.values()].flat();
  }

  /** Forgets commands whose invocations all ended more than the TTL ago. */
  sweep(): void {
    // Each request may sweep, but a long-lived stack with many records should not pay for it every time.
    if (Date.now() - this.lastSweep < Math.min(1_000, this.ttlMs)) return;
    this.lastSweep = Date.now();
    const cutoff = Date.now() - this.ttlMs;
    for (const [id, invocations] of this.commands) {
      if (invocations.every((inv) => isTerminal(inv.status) && (inv.endedAt ?? 0) < cutoff)) this.commands.delete(id);
    }
  }
}
