/**
 * One command's run on one instance and the rules of its status, kept apart
 * from the processes and the HTTP: the agent channel moves an invocation
 * through these states, the views read them, and the rules (what is terminal,
 * how an exit or a kill ends) are pure and tested on their own.
 */
import { StringDecoder } from 'node:string_decoder';
import { ssmStderrCap, ssmStdoutCap } from '../../../contract/host-protocol';
import type { Script } from './starter';

export type InvocationStatus = 'Pending' | 'InProgress' | 'Success' | 'Failed' | 'TimedOut' | 'Cancelling' | 'Cancelled';

/** Why the endpoint killed a running script: its execution timeout, a CancelCommand, or its instance deregistered. */
export type KillReason = 'timeout' | 'cancel' | 'gone';

/** How an invocation ends: what GetCommandInvocation then shows. */
export interface Outcome {
  status: InvocationStatus;
  details: string;
  responseCode: number;
  /** A line the SSM agent adds to stderr for this ending. */
  stderrLine?: string;
}

/** Keeps the first `cap` characters of a stream, as SSM does, and drops the rest. */
export class CappedText {
  text = '';
  private readonly decoder = new StringDecoder('utf8');
  constructor(private readonly cap: number) {}

  push(chunk: Buffer): void {
    if (this.text.length >= this.cap) return;
    this.append(this.decoder.write(chunk));
  }

  end(): void {
    if (this.text.length < this.cap) this.append(this.decoder.end());
  }

  append(s: string): void {
    const room = this.cap - this.text.length;
    if (room <= 0) return;
    let piece = s.length > room ? s.slice(0, room) : s;
    // Never end on half a surrogate pair.
    const last = piece.charCodeAt(piece.length - 1);
    if (s.length > room && last >= 0xd800 && last <= 0xdbff) piece = piece.slice(0, -1);
    this.text += piece;
  }
}

/** What SendCommand fixes for each of its invocations. */
export interface InvocationRequest {
  commandId: string;
  instanceId: string;
  comment: string;
  documentVersion: string;
  requestedAt: number;
  /** GetCommandInvocation finds it from then on (SSM's eventual consistency). */
  visibleAt: number;
  commands: string[];
  workingDirectory: string;
  executionTimeoutSeconds: number;
}

export interface Invocation extends InvocationRequest {
  status: InvocationStatus;
  statusDetails: string;
  responseCode: number;
  startedAt?: number;
  endedAt?: number;
  stdout: CappedText;
  stderr: CappedText;
  child?: Script;
  killReason?: KillReason;
  timer?: NodeJS.Timeout;
  /** Set while the script runs: finishes the invocation even if escaped grandchildren hold the pipes. */
  afterKill?: () => void;
  /** Resolves once the invocation reached a terminal status. */
  finished: Promise<void>;
  /** True while it occupies one of its instance's workers. */
  holdsWorker?: boolean;
  finish: () => void;
}

/** A fresh invocation, Pending, with SSM's output caps. */
export function newInvocation(request: InvocationRequest): Invocation {
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  return {
    ...request,
    status: 'Pending',
    statusDetails: 'Pending',
    responseCode: -1,
    stdout: new CappedText(ssmStdoutCap),
    stderr: new CappedText(ssmStderrCap),
    finished,
    finish,
  };
}

export function isTerminal(status: InvocationStatus): boolean {
  return status === 'Success' || status === 'Failed' || status === 'TimedOut' || status === 'Cancelled';
}

export const cancelled: Outcome = { status: 'Cancelled', details: 'Cancelled', responseCode: -1 };
/** The instance went away before or while it ran. */
export const undeliverable: Outcome = { status: 'Failed', details: 'Undeliverable', responseCode: -1 };

export function failed(responseCode: number): Outcome {
  return { status: 'Failed', details: 'Failed', responseCode };
}

/**
 * How a script that exited ends: a kill's reason wins over its exit status (a
 * killed script's status says only that it was killed), as with the agent.
 */
export function exitOutcome(killReason: KillReason | undefined, code: number | null, stderrSoFar: string): Outcome {
  if (killReason === 'timeout') return { status: 'TimedOut', details: 'ExecutionTimedOut', responseCode: -1 };
  if (killReason === 'gone') return undeliverable;
  if (killReason === 'cancel') return cancelled;
  if (code === 0) return { status: 'Success', details: 'Success', responseCode: 0 };
  // The SSM agent appends this line to stderr when a script fails.
  const sep = stderrSoFar === '' || stderrSoFar.endsWith('\n') ? '' : '\n';
  return { ...failed(code ?? -1), stderrLine: `${sep}failed to run commands: exit status ${code ?? -1}` };
}

/** A command's status in ListCommands, from its invocations': Success only when every one succeeded. */
export function commandStatus(invocations: readonly Invocation[]): 'InProgress' | 'Success' | 'Failed' {
  if (!invocations.every((i) => isTerminal(i.status))) return 'InProgress';
  return invocations.every((i) => i.status === 'Success') ? 'Success' : 'Failed';
}
