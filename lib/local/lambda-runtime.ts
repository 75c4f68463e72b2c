/**
 * Lambda, as the local stack runs it: each function is its bundle
 * (dist/lambdas/<name>.mjs, the file the CDK deploys) in worker threads, one
 * invocation at a time per worker, warm workers reused, more started under
 * concurrency. Lambda's limits hold: an invocation past the function's timeout
 * is abandoned and its worker terminated (nothing it would have done next
 * happens, as on AWS), and request events and responses over 6 MB fail.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { lambdaMaxPayloadBytes } from '../../lambdas/shared/gateway';
import { repoRoot } from '../paths';

export type InvokeOutcome =
  | { kind: 'ok'; payload: unknown }
  /** The handler threw, or Lambda refused the payload (RequestEntityTooLarge / ResponseSizeTooLarge). */
  | { kind: 'error'; errorType: string; errorMessage: string }
  /** The function ran past its timeout and was stopped. */
  | { kind: 'timeout' };

export interface LocalFunctionSpec {
  name: string;
  /** Seconds before an invocation is abandoned (the function's Timeout in the CDK). */
  timeoutSeconds: number;
  memoryMb: number;
  /** The function's environment (a copy is taken when a worker starts). */
  env: Record<string, string | undefined>;
  /** @default dist/lambdas/<name>.mjs */
  bundle?: string;
  /**
   * Where the function's stdout and stderr go, line by line (what Lambda sends
   * to CloudWatch Logs). @default this process's own stdout and stderr
   */
  output?: (stream: 'stdout' | 'stderr') => (chunk: Buffer | string) => void;
}

interface Environment {
  worker: Worker;
  busy: boolean;
  idleTimer?: NodeJS.Timeout;
}

/** An idle execution environment is kept this long, then reclaimed (Lambda keeps them for minutes). */
const idleReclaimMs = 5 * 60_000;

export class LocalFunction {
  private readonly idle: Environment[] = [];
  private readonly all = new Set<Environment>();
  private readonly bundle: string;
  private closed = false;

  constructor(private spec: LocalFunctionSpec) {
    this.bundle = spec.bundle ?? join(repoRoot, 'dist', 'lambdas', `${spec.name}.mjs`);
    if (!existsSync(this.bundle)) {
      throw new Error(`no bundle for function ${spec.name} at ${this.bundle}; build first (node --import tsx scripts/build.mjs)`);
    }
  }

  /** Like UpdateFunctionConfiguration: new environment variables, fresh execution environments. */
  async updateEnvironment(env: Record<string, string | undefined>): Promise<void> {
    this.spec = { ...this.spec, env };
    await Promise.all([...this.idle].map((e) => this.discard(e)));
  }

  private start(): Promise<Environment> {
    const worker = new Worker(new URL('./lambda-worker.mjs', import.meta.url), {
      workerData: { bundle: this.bundle, functionName: this.spec.name, memoryMb: this.spec.memoryMb },
      env: {
        ...(Object.fromEntries(Object.entries(this.spec.env).filter(([, v]) => v !== undefined)) as Record<string, string>),
        // What Lambda sets for every execution environment (Powertools reads them: the cold start, the function's name).
        AWS_LAMBDA_FUNCTION_NAME: this.spec.name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(this.spec.memoryMb),
        AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
        AWS_LAMBDA_INITIALIZATION_TYPE: 'on-demand',
        // No X-Ray daemon here: the tracer stays off, as it is outside Lambda.
        POWERTOOLS_TRACE_ENABLED: 'false',
      },
      // As deployed, no Node flags (a worker would otherwise take the test process's own, its loader included):
      // the bundle maps its own stack traces (lambdas/shared/stack-traces.ts).
      execArgv: [],
      stdout: this.spec.output !== undefined,
      stderr: this.spec.output !== undefined,
    });
    if (this.spec.output) {
      worker.stdout.on('data', this.spec.output('stdout'));
      worker.stderr.on('data', this.spec.output('stderr'));
    }
    const environment: Environment = { worker, busy: true };
    this.all.add(environment);
    return new Promise((resolve, reject) => {
      const onMessage = (msg: { ready?: boolean }) => {
        if (!msg.ready) return;
        worker.off('error', onError);
        worker.off('message', onMessage);
        resolve(environment);
      };
      const onError = (err: Error) => {
        this.all.delete(environment);
        reject(err);
      };
      worker.on('message', onMessage);
      worker.once('error', onError);
      worker.once('exit', () => this.all.delete(environment));
    });
  }

  private async discard(e: Environment): Promise<void> {
    if (e.idleTimer) clearTimeout(e.idleTimer);
    const at = this.idle.indexOf(e);
    if (at >= 0) this.idle.splice(at, 1);
    this.all.delete(e);
    await e.worker.terminate();
  }

  private release(e: Environment): void {
    e.busy = false;
    if (this.closed) return void this.discard(e);
    e.idleTimer = setTimeout(() => void this.discard(e), idleReclaimMs);
    e.idleTimer.unref();
    this.idle.push(e);
  }

  /** One synchronous invocation, as API Gateway's Lambda proxy integration makes it. */
  async invoke(event: unknown): Promise<InvokeOutcome> {
    if (this.closed) return { kind: 'error', errorType: 'ServiceException', errorMessage: 'the local Lambda runtime is shut down' };
    const payload = JSON.stringify(event);
    if (Buffer.byteLength(payload) > lambdaMaxPayloadBytes) {
      return {
        kind: 'error',
        errorType: 'RequestEntityTooLargeException',
        errorMessage: `Request must be smaller than ${lambdaMaxPayloadBytes} bytes for the InvokeFunction operation`,
      };
    }
    let environment = this.idle.pop();
    if (environment) {
      if (environment.idleTimer) clearTimeout(environment.idleTimer);
      environment.busy = true;
    } else {
      environment = await this.start();
    }
    const e = environment;
    const id = randomUUID();
    const deadline = Date.now() + this.spec.timeoutSeconds * 1000;
    return new Promise<InvokeOutcome>((resolve) => {
      let settled = false;
      const settle = (outcome: InvokeOutcome, reuse: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        e.worker.off('message', onMessage);
        e.worker.off('error', onError);
        if (reuse) this.release(e);
        else void this.discard(e);
        resolve(outcome);
      };
      const onMessage = (msg: { id?: string; ok?: boolean; payload?: string; errorType?: string; errorMessage?: string }) => {
        if (msg.id !== id) return;
        if (!msg.ok) return settle({ kind: 'error', errorType: msg.errorType ?? 'Error', errorMessage: msg.errorMessage ?? '' }, true);
        const size = Buffer.byteLength(msg.payload ?? '');
        if (size > lambdaMaxPayloadBytes) {
          return settle(
            {
              kind: 'error',
              errorType: 'Function.ResponseSizeTooLarge',
              errorMessage: `Response payload size (${size} bytes) exceeded maximum allowed payload size (${lambdaMaxPayloadBytes} bytes).`,
            },
            true,
          );
        }
        settle({ kind: 'ok', payload: JSON.parse(msg.payload ?? 'null') }, true);
      };
      // A crash of the runtime itself (not a thrown error): that environment is gone.
      const onError = (err: Error) => settle({ kind: 'error', errorType: 'Runtime.ExitError', errorMessage: err.message }, false);
      // Lambda stops the invocation at its timeout; the worker goes with everything it had in flight.
      const timer = setTimeout(() => settle({ kind: 'timeout' }, false), Math.max(0, deadline - Date.now()));
      e.worker.on('message', onMessage);
      e.worker.once('error', onError);
      e.worker.postMessage({ id, event, requestId: (event as { requestContext?: { requestId?: string } })?.requestContext?.requestId ?? id, deadline });
    });
  }

  /** Execution environments alive now (busy or idle). */
  get environments(): number {
    return this.all.size;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.all].map((e) => this.discard(e)));
  }
}
