/**
 * A thin, typed client for the Docker Engine API over its unix socket.
 *
 * Uses docker-modem (dockerode's transport) directly: dockerode itself loads
 * @grpc/grpc-js and protobufjs at require time for BuildKit sessions we never
 * use, which costs ~40 ms on every exec and breaks when bundled to ESM
 * (protobufjs reads __dirname). Types come from @types/dockerode.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import Modem from 'docker-modem';
import type { ContainerCreateOptions, ContainerInfo, ContainerInspectInfo, ExecInspectInfo, NetworkInspectInfo } from 'dockerode';
import { HostAgentError } from './errors';
import { span, timingsOn } from '../../lambdas/shared/timing';

/** An Engine API answer outside 2xx/304. */
export class DockerApiError extends HostAgentError {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(statusCode === 404 ? 'not_found' : 'docker_error', message);
    this.name = 'DockerApiError';
  }
}

export interface ExecCreateOptions {
  Cmd: string[];
  User?: string;
  Env?: string[];
  WorkingDir?: string;
  /** Only for execs started with startExecWithStdin. */
  AttachStdin?: boolean;
  AttachStdout: boolean;
  AttachStderr: boolean;
}

export interface NetworkCreateOptions {
  Name: string;
  Driver: string;
  CheckDuplicate?: boolean;
  Internal?: boolean;
  Options?: Record<string, string>;
  Labels?: Record<string, string>;
}

type Query = Record<string, string | number | boolean>;

/** A registry's credentials as the Engine API takes them (X-Registry-Auth). */
export interface RegistryCredentials {
  username: string;
  password: string;
  serveraddress: string;
}

/** What we read of `GET /images/{name}/json`. */
export interface ImageInspect {
  Id: string;
  RepoTags?: string[] | null;
  /** `repo@sha256:...` for each registry the image was pulled from or pushed to (empty for a local build). */
  RepoDigests?: string[] | null;
}

/** What we read of `GET /images/json`. */
export interface ImageSummary {
  Id: string;
  RepoTags?: string[] | null;
  RepoDigests?: string[] | null;
  Created: number;
  Containers?: number;
}

const okStatuses = { 200: true, 201: true, 204: true, 304: true } as const;

function describeFailure(error: unknown, what: string): HostAgentError {
  const e = error as { statusCode?: number; json?: { message?: string } | Buffer | string; message?: string; code?: string };
  if (typeof e?.statusCode === 'number') {
    const detail =
      e.json && typeof e.json === 'object' && !Buffer.isBuffer(e.json) && e.json.message ? e.json.message : String(e.json ?? e.message ?? '').trim();
    return new DockerApiError(e.statusCode, `${what}: ${detail || `HTTP ${e.statusCode}`}`);
  }
  if (e?.code === 'ENOENT' || e?.code === 'ECONNREFUSED' || e?.code === 'EACCES') {
    return new HostAgentError('docker_error', `${what}: cannot reach the Docker engine socket (${e.code}); is dockerd running?`);
  }
  return new HostAgentError('docker_error', `${what}: ${e?.message ?? String(error)}`);
}

export class DockerClient {
  private readonly modem: Modem;

  constructor(readonly socketPath: string) {
    this.modem = new Modem({ socketPath });
  }

  private call<T>(
    method: string,
    path: string,
    what: string,
    { query, body, stream = false, auth }: { query?: Query; body?: unknown; stream?: boolean; auth?: RegistryCredentials } = {},
  ): Promise<T> {
    if (timingsOn()) {
      const op = `docker.${method} ${path.replace(/^\/(containers|exec|images|networks)\/[^/]+/, '/$1/{id}')}`;
      return span(op, () => this.dial<T>(method, path, what, { query, body, stream, auth }));
    }
    return this.dial<T>(method, path, what, { query, body, stream, auth });
  }

  private dial<T>(
    method: string,
    path: string,
    what: string,
    { query, body, stream, auth }: { query?: Query | undefined; body?: unknown; stream: boolean; auth?: RegistryCredentials | undefined },
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.modem.dial(
        {
          method,
          // docker-modem appends `_query` only to a path ending in '?', and sends
          // `_body` as a POST's JSON body (an empty object means no body).
          path: query ? `${path}?` : path,
          statusCodes: okStatuses,
          isStream: stream,
          // docker-modem sends authconfig as the X-Registry-Auth header (base64url JSON).
          ...(auth ? { authconfig: auth } : {}),
          options: { _query: query ?? {}, _body: body ?? {} },
        },
        (error, data) => (error ? reject(describeFailure(error, what)) : resolve(data as T)),
      );
    });
  }

  ping(): Promise<unknown> {
    return this.call('GET', '/_ping', 'ping the Docker engine');
  }

  /** Inspects a container by name or id; `undefined` when there is none. */
  async inspectContainer(nameOrId: string): Promise<ContainerInspectInfo | undefined> {
    try {
      return await this.call<ContainerInspectInfo>('GET', `/containers/${encodeURIComponent(nameOrId)}/json`, `inspect container ${nameOrId}`);
    } catch (error) {
      if (error instanceof DockerApiError && error.statusCode === 404) return undefined;
      throw error;
    }
  }

  listContainers(filters: Record<string, string[]>, all = true): Promise<ContainerInfo[]> {
    return this.call('GET', '/containers/json', 'list containers', { query: { all, filters: JSON.stringify(filters) } });
  }

  createContainer(name: string, options: ContainerCreateOptions): Promise<{ Id: string; Warnings: string[] }> {
    return this.call('POST', '/containers/create', `create container ${name}`, { query: { name }, body: options });
  }

  startContainer(id: string): Promise<unknown> {
    return this.call('POST', `/containers/${encodeURIComponent(id)}/start`, `start container ${id}`);
  }

  /** Changes a container's resources in place (`docker update`): CPU, memory, processes. */
  updateContainer(id: string, resources: { NanoCpus: number; Memory: number; MemorySwap: number; PidsLimit: number }): Promise<unknown> {
    return this.call('POST', `/containers/${encodeURIComponent(id)}/update`, `update container ${id}`, { body: resources });
  }

  /** Renames a container (its network endpoint follows). */
  renameContainer(id: string, name: string): Promise<unknown> {
    return this.call('POST', `/containers/${encodeURIComponent(id)}/rename`, `rename container ${id} to ${name}`, { query: { name } });
  }

  /** SIGTERM, then SIGKILL after `graceSeconds`; a stopped container is not an error (304). */
  stopContainer(id: string, graceSeconds: number): Promise<unknown> {
    return this.call('POST', `/containers/${encodeURIComponent(id)}/stop`, `stop container ${id}`, { query: { t: graceSeconds } });
  }

  killContainer(id: string): Promise<unknown> {
    return this.call('POST', `/containers/${encodeURIComponent(id)}/kill`, `kill container ${id}`, { query: { signal: 'SIGKILL' } });
  }

  removeContainer(id: string, force: boolean): Promise<unknown> {
    return this.call('DELETE', `/containers/${encodeURIComponent(id)}`, `remove container ${id}`, { query: { force, v: true } });
  }

  inspectImage(name: string): Promise<ImageInspect> {
    return this.call('GET', `/images/${encodeURIComponent(name)}/json`, `inspect image ${name}`);
  }

  /** Images on the host (`docker images`), optionally filtered (e.g. `{ reference: ['repo'] }`). */
  listImages(filters: Record<string, string[]> = {}): Promise<ImageSummary[]> {
    return this.call('GET', '/images/json', 'list images', { query: { filters: JSON.stringify(filters) } });
  }

  /** Removes an image (untags a name, or deletes by id); never forced: an image a container uses answers 409. */
  removeImage(nameOrId: string): Promise<unknown> {
    return this.call('DELETE', `/images/${encodeURIComponent(nameOrId)}`, `remove image ${nameOrId}`, { query: { force: false, noprune: false } });
  }

  /**
   * Pulls an image and waits for the pull to finish; `auth` (a registry's
   * credentials, e.g. an ECR token) goes in the X-Registry-Auth header, never the URL.
   */
  async pullImage(name: string, auth?: RegistryCredentials): Promise<void> {
    const response = await this.call<IncomingMessage>('POST', '/images/create', `pull image ${name}`, {
      query: { fromImage: name },
      stream: true,
      ...(auth ? { auth } : {}),
    });
    let last = '';
    for await (const chunk of response) last += String(chunk);
    // The engine answers 200 and reports failures as the stream's last JSON message.
    const tail = last.trim().split('\n').at(-1) ?? '';
    if (tail.includes('"error"')) throw new HostAgentError('docker_error', `pull image ${name}: ${tail}`);
  }

  createExec(containerId: string, options: ExecCreateOptions): Promise<{ Id: string }> {
    return this.call('POST', `/containers/${encodeURIComponent(containerId)}/exec`, `create exec in ${containerId}`, { body: options });
  }

  /** Starts an exec and returns its multiplexed stdout/stderr stream (Tty off). */
  startExec(execId: string): Promise<IncomingMessage> {
    return this.call('POST', `/exec/${execId}/start`, `start exec ${execId}`, {
      body: { Detach: false, Tty: false },
      stream: true,
    });
  }

  /** Starts an exec with no attached streams; answers once the engine started it. */
  startExecDetached(execId: string): Promise<unknown> {
    return this.call('POST', `/exec/${execId}/start`, `start exec ${execId}`, { body: { Detach: true, Tty: false } });
  }

  /**
   * Starts an exec created with AttachStdin over a hijacked connection (HTTP
   * upgrade on the engine socket). Write the command's stdin to the socket and
   * end() it to close that stdin (the engine passes the half-close on as EOF);
   * read the multiplexed stdout/stderr until the engine ends the socket.
   */
  startExecWithStdin(execId: string): Promise<Duplex> {
    const what = `start exec ${execId} with stdin`;
    return new Promise<Duplex>((resolve, reject) => {
      this.modem.dial(
        {
          method: 'POST',
          path: `/exec/${execId}/start`,
          hijack: true,
          isStream: true,
          // Success is the 101 upgrade, delivered as the socket; any plain answer (404, 409, 500) is a failure.
          statusCodes: { 101: true },
          options: { _body: { Detach: false, Tty: false } },
        },
        (error, data) => (error ? reject(describeFailure(error, what)) : resolve(data as Duplex)),
      );
    });
  }

  inspectExec(execId: string): Promise<ExecInspectInfo> {
    return this.call('GET', `/exec/${execId}/json`, `inspect exec ${execId}`);
  }

  /** A started exec's process id (host pid): the engine reports it a moment after the start. */
  async execPid(execId: string): Promise<number> {
    for (let attempt = 0; attempt < 200; attempt++) {
      const info = await this.inspectExec(execId);
      if (info.Pid) return info.Pid;
      if (!info.Running && attempt > 0 && typeof info.ExitCode === 'number') break;
      await new Promise((r) => setTimeout(r, Math.min(20, 1 + attempt)));
    }
    throw new HostAgentError('docker_error', `exec ${execId} reports no process`);
  }

  async inspectNetwork(name: string): Promise<NetworkInspectInfo | undefined> {
    try {
      return await this.call<NetworkInspectInfo>('GET', `/networks/${encodeURIComponent(name)}`, `inspect network ${name}`);
    } catch (error) {
      if (error instanceof DockerApiError && error.statusCode === 404) return undefined;
      throw error;
    }
  }

  createNetwork(options: NetworkCreateOptions): Promise<{ Id: string }> {
    return this.call('POST', '/networks/create', `create network ${options.Name}`, { body: options });
  }

  removeNetwork(id: string): Promise<unknown> {
    return this.call('DELETE', `/networks/${encodeURIComponent(id)}`, `remove network ${id}`);
  }
}

/**
 * Splits Docker's multiplexed stream (8-byte header: stream type, 3 zero
 * bytes, big-endian payload length) into stdout and stderr payloads.
 */
export class DockerStreamDemuxer {
  private pending: Buffer = Buffer.alloc(0);
  private raw = false;

  /**
   * `onUnframed`, when given, receives bytes that are not framed (instead of
   * stdout): for callers that must not take an engine error for data.
   */
  constructor(
    private readonly onStdout: (chunk: Buffer) => void,
    private readonly onStderr: (chunk: Buffer) => void,
    private readonly onUnframed: (chunk: Buffer) => void = onStdout,
  ) {}

  push(chunk: Buffer): void {
    // After a header that is not one (the engine writes some errors unframed), pass bytes through as stdout.
    if (this.raw) {
      this.onUnframed(chunk);
      return;
    }
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    while (this.pending.length >= 8) {
      const type = this.pending[0]!;
      if (type > 2 || this.pending[1] !== 0 || this.pending[2] !== 0 || this.pending[3] !== 0) {
        this.raw = true;
        this.onUnframed(this.pending);
        this.pending = Buffer.alloc(0);
        return;
      }
      const size = this.pending.readUInt32BE(4);
      if (this.pending.length < 8 + size) break;
      const payload = this.pending.subarray(8, 8 + size);
      this.pending = this.pending.subarray(8 + size);
      if (type === 2) this.onStderr(payload);
      else this.onStdout(payload);
    }
  }

  /** At the end of the stream: a short unframed tail (an engine error) is stdout; a cut-off frame is dropped. */
  end(): void {
    const looksFramed = this.pending.length > 0 && this.pending[0]! <= 2 && this.pending.subarray(1, 4).every((b) => b === 0);
    if (this.pending.length > 0 && !looksFramed) this.onUnframed(this.pending);
    this.pending = Buffer.alloc(0);
  }
}
