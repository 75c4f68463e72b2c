/**
 * The OpenAPI 3.1 document, generated from the route table (routes.ts), the
 * request schemas (schemas.ts) and the response schemas (responses.ts): served
 * at GET /openapi.json and written to docs/openapi.json by the build. Every
 * route needs an entry in `operations`; the generator refuses a route without one.
 */
import * as z from 'zod';
import { egressPolicySchema } from '../../contract/egress-policy';
import { appVersion } from '../../contract/version';
import { loadConfig, type ControlPlaneConfig } from './config';
import { binaryMediaTypes, filesInlineMaxBytes, gatewayResponses } from './gateway';
import * as res from './responses';
import { routes, type Route } from './routes';
import * as req from './schemas';

/** A schema of either zod API: the request schemas are zod/mini, the response schemas classic zod. */
type Schema = z.core.$ZodType;
/** What a status answers: JSON of a schema, raw bytes, or nothing. */
type Answer = { json: Schema; description: string } | { bytes: true; description: string } | { empty: true; description: string };

export interface Operation {
  operationId: string;
  summary: string;
  tags: string[];
  query?: z.core.$ZodObject;
  body?: Schema | 'bytes';
  /** Request headers beyond the key. */
  headers?: { name: string; description: string }[];
  responses: Record<number, Answer>;
}

const json = (schema: Schema, description: string): Answer => ({ json: schema, description });

/** What each route takes and answers, keyed `METHOD /path` as in the route table. */
export function operations(limits: ControlPlaneConfig['limits']): Record<string, Operation> {
  const sandbox = (d: string) => json(res.sandboxView, d);
  const pause: Operation = {
    operationId: 'pauseSandbox',
    summary: 'Pause: frees CPU and memory, keeps every file',
    tags: ['sandboxes'],
    responses: { 200: sandbox('paused'), 202: sandbox('pausing') },
  };
  const resume: Operation = {
    operationId: 'resumeSandbox',
    summary: 'Resume a paused sandbox',
    tags: ['sandboxes'],
    responses: { 200: sandbox('ready'), 202: sandbox('resuming') },
  };
  return {
    'GET /health': {
      operationId: 'health',
      summary: 'Liveness of the API and its table',
      tags: ['meta'],
      responses: { 200: json(res.healthAnswer, 'healthy'), 503: json(res.healthAnswer, 'degraded') },
    },
    'GET /openapi.json': {
      operationId: 'openApi',
      summary: 'This document',
      tags: ['meta'],
      responses: { 200: { json: z.record(z.string(), z.unknown()), description: 'the OpenAPI 3.1 document' } },
    },
    'POST /sandboxes': {
      operationId: 'createSandbox',
      summary: 'Create a sandbox for one of your users',
      tags: ['sandboxes'],
      body: req.createSandboxBody(limits),
      headers: [{ name: 'Idempotency-Key', description: 'a retry with the same key answers the same sandbox as it stands now, never a second one' }],
      responses: { 201: sandbox('ready'), 202: sandbox('still creating: follow with GET /sandboxes/{id}?wait=20') },
    },
    'GET /sandboxes': {
      operationId: 'listSandboxes',
      summary: 'List sandboxes',
      tags: ['sandboxes'],
      query: req.listQuery,
      responses: { 200: json(res.sandboxList, 'a page of sandboxes') },
    },
    'GET /sandboxes/{id}': {
      operationId: 'getSandbox',
      summary: 'One sandbox; with wait, answers as soon as its status changes',
      tags: ['sandboxes'],
      query: req.getSandboxQuery,
      responses: { 200: sandbox('the sandbox') },
    },
    'DELETE /sandboxes/{id}': {
      operationId: 'destroySandbox',
      summary: 'End a sandbox',
      tags: ['sandboxes'],
      query: req.destroyQuery,
      responses: { 204: { empty: true, description: 'ended' }, 202: sandbox('shutting_down: its host needs longer') },
    },
    'POST /sandboxes/{id}/exec': {
      operationId: 'exec',
      summary: 'Run a command and wait for it (within the API call)',
      tags: ['commands'],
      body: req.execBody,
      responses: { 200: json(res.execAnswer, 'the command ended'), 202: json(res.commandView, 'still running: follow GET .../commands/{command_id}') },
    },
    'POST /sandboxes/{id}/heartbeat': {
      operationId: 'heartbeat',
      summary: 'Refresh the idle timer (ready -> running)',
      tags: ['signals'],
      responses: { 200: json(res.heartbeatAnswer, 'acknowledged') },
    },
    'POST /sandboxes/{id}/complete': {
      operationId: 'complete',
      summary: 'End the sandbox with a result',
      tags: ['signals'],
      body: req.completeBody,
      responses: { 200: sandbox('shutting down') },
    },
    'POST /sandboxes/{id}/error': {
      operationId: 'reportError',
      summary: 'End the sandbox with an agent error',
      tags: ['signals'],
      body: req.errorBody,
      responses: { 200: json(res.errorSignalAnswer, 'shutting down') },
    },
    'POST /sandboxes/{id}/timeout': {
      operationId: 'setTimeout',
      summary: 'Refresh the idle timer; change the idle timeout or TTL',
      tags: ['sandboxes'],
      body: req.timeoutBody(limits),
      responses: { 200: sandbox('the sandbox') },
    },
    'POST /sandboxes/{id}/pause': pause,
    'POST /sandboxes/{id}/resume': resume,
    // The deprecated aliases answer as the routes they stand for; their operationIds stay those clients were generated with.
    'POST /sandboxes/{id}/stop': { ...pause, operationId: 'stopSandbox', summary: 'Deprecated name of POST /sandboxes/{id}/pause (answers the same)' },
    'POST /sandboxes/{id}/start': { ...resume, operationId: 'startSandbox', summary: 'Deprecated name of POST /sandboxes/{id}/resume (answers the same)' },
    'POST /sandboxes/{id}/commands': {
      operationId: 'startCommand',
      summary: 'Start a command that outlives the request',
      tags: ['commands'],
      body: req.startCommandBody,
      responses: { 200: json(res.commandWithOutput, 'ended within wait'), 202: json(res.commandWithOutput, 'running') },
    },
    'GET /sandboxes/{id}/commands': {
      operationId: 'listCommands',
      summary: 'Commands of a sandbox, newest first',
      tags: ['commands'],
      query: req.listCommandsQuery,
      responses: { 200: json(res.commandList, 'a page of commands') },
    },
    'GET /sandboxes/{id}/commands/{command_id}': {
      operationId: 'getCommand',
      summary: 'A command and its output from the given byte offsets',
      tags: ['commands'],
      query: req.commandQuery,
      responses: { 200: json(res.commandWithOutput, 'the command') },
    },
    'POST /sandboxes/{id}/commands/{command_id}/kill': {
      operationId: 'killCommand',
      summary: 'Kill a command and everything it started',
      tags: ['commands'],
      body: req.killCommandBody,
      responses: { 202: json(res.commandView, 'killing') },
    },
    'POST /sandboxes/{id}/commands/{command_id}/stdin': {
      operationId: 'writeCommandStdin',
      summary: "Write to a command's stdin at an offset (a retried write is never applied twice)",
      tags: ['commands'],
      body: req.commandStdinBody,
      responses: { 200: json(res.stdinAnswer, 'written') },
    },
    'PUT /sandboxes/{id}/network': {
      operationId: 'setNetwork',
      summary: 'Set the egress policy',
      tags: ['network'],
      body: req.networkBody,
      responses: { 200: sandbox('the sandbox') },
    },
    'GET /sandboxes/{id}/network/log': {
      operationId: 'getEgressLog',
      summary: 'Egress decisions, newest first',
      tags: ['network'],
      query: req.egressLogQuery,
      responses: { 200: json(res.egressLog, 'the log') },
    },
    'GET /sandboxes/{id}/files': {
      operationId: 'readFile',
      summary: `Read a file (up to ${filesInlineMaxBytes} bytes; send Accept: application/octet-stream)`,
      tags: ['files'],
      query: req.filePathQuery,
      responses: { 200: { bytes: true, description: 'the bytes; X-File-Size, X-File-Mode, X-File-Sha256, X-File-Mtime headers' } },
    },
    'PUT /sandboxes/{id}/files': {
      operationId: 'writeFile',
      summary: `Write a whole file atomically (up to ${filesInlineMaxBytes} bytes, Content-Type: application/octet-stream)`,
      tags: ['files'],
      query: req.writeFileQuery,
      body: 'bytes',
      responses: { 200: json(res.fileWritten, 'written') },
    },
    'DELETE /sandboxes/{id}/files': {
      operationId: 'deleteFile',
      summary: 'Delete a file or directory',
      tags: ['files'],
      query: req.deleteFileQuery,
      responses: { 200: json(res.fileDeleted, 'deleted') },
    },
    'GET /sandboxes/{id}/files/list': {
      operationId: 'listFiles',
      summary: 'One page of a directory',
      tags: ['files'],
      query: req.listFilesQuery,
      responses: { 200: json(res.fileListing, 'entries') },
    },
    'GET /sandboxes/{id}/files/stat': {
      operationId: 'statFile',
      summary: 'One entry',
      tags: ['files'],
      query: req.filePathQuery,
      responses: { 200: json(res.fileEntry, 'the entry') },
    },
    'POST /sandboxes/{id}/files/mkdir': {
      operationId: 'makeDirectory',
      summary: 'Make a directory',
      tags: ['files'],
      body: req.mkdirBody,
      responses: { 200: json(res.fileEntry, 'the directory') },
    },
    'POST /sandboxes/{id}/files/move': {
      operationId: 'moveFile',
      summary: 'Move or rename',
      tags: ['files'],
      body: req.moveBody,
      responses: { 200: json(res.fileMoved, 'moved') },
    },
    'POST /sandboxes/{id}/files/upload': {
      operationId: 'startUpload',
      summary: 'A presigned PUT for a large file (up to 5 GiB); then POST .../complete',
      tags: ['files'],
      body: req.uploadBody,
      responses: { 200: json(res.uploadTicket, 'the ticket') },
    },
    'POST /sandboxes/{id}/files/upload/{upload_id}/complete': {
      operationId: 'completeUpload',
      summary: 'Move the uploaded bytes into the sandbox; repeat to follow a 202',
      tags: ['files'],
      responses: { 200: json(res.uploadDone, 'in the sandbox'), 202: json(res.transferInProgress, 'still moving') },
    },
    'POST /sandboxes/{id}/files/download': {
      operationId: 'startDownload',
      summary: 'A presigned GET for a file, or a directory as tar.gz',
      tags: ['files'],
      body: req.downloadBody,
      responses: { 200: json(res.downloadDone, 'ready to GET'), 202: json(res.transferInProgress, 'still staging: GET .../download/{download_id}') },
    },
    'GET /sandboxes/{id}/files/download/{download_id}': {
      operationId: 'getDownload',
      summary: 'Follow a download',
      tags: ['files'],
      query: req.transferQuery,
      responses: { 200: json(res.downloadDone, 'ready to GET'), 202: json(res.transferInProgress, 'still staging') },
    },
    'GET /users/{user_id}/home/files': {
      operationId: 'readHomeFile',
      summary: "Read a file of a user's stored home (no sandbox needed)",
      tags: ['home'],
      query: req.filePathQuery,
      responses: { 200: { bytes: true, description: 'the bytes; X-File-* and X-Home-Copy-May-Lag headers' } },
    },
    'GET /users/{user_id}/home/files/list': {
      operationId: 'listHomeFiles',
      summary: "One page of a user's stored home",
      tags: ['home'],
      query: req.listFilesQuery,
      responses: { 200: json(res.homeListing, 'entries') },
    },
    'POST /users/{user_id}/home/files/download': {
      operationId: 'downloadHomeFile',
      summary: 'A presigned GET for one stored file',
      tags: ['home'],
      body: req.homeDownloadBody,
      responses: { 200: json(res.homeDownload, 'ready to GET') },
    },
  };
}

/** The documented shape of fields whose zod schema is a parse function (transforms have no JSON Schema of their own). */
const egressJsonSchema = {
  oneOf: [
    { type: 'string', enum: ['allow_all', 'deny_all'] },
    {
      type: 'object',
      properties: { allow: { type: 'array', items: { type: 'string' }, description: 'domains (*.example.com for names below it) and public CIDRs' } },
      required: ['allow'],
      additionalProperties: false,
    },
  ],
};
const networkJsonSchema = {
  oneOf: [
    { type: 'string', enum: ['none', 'bridge'] },
    { type: 'object', properties: { egress: egressJsonSchema }, required: ['egress'], additionalProperties: false },
  ],
};

type JsonSchema = Record<string, unknown>;

function toJson(schema: Schema, io: 'input' | 'output'): JsonSchema {
  const out = z.toJSONSchema(schema, {
    target: 'draft-2020-12',
    io,
    unrepresentable: 'any',
    override: (ctx) => {
      if (ctx.zodSchema === (egressPolicySchema as unknown)) Object.assign(ctx.jsonSchema, egressJsonSchema);
      if (ctx.zodSchema === (req.networkConfigSchema as unknown)) Object.assign(ctx.jsonSchema, networkJsonSchema);
    },
  }) as JsonSchema;
  delete out.$schema;
  return out;
}

const responseNames = new Map<unknown, string>(
  Object.entries(res)
    .filter(([, v]) => v instanceof z.ZodType)
    .map(([k, v]) => [v, k.charAt(0).toUpperCase() + k.slice(1)]),
);
const octetStream = binaryMediaTypes[0] ?? 'application/octet-stream';
const errorRef = { $ref: '#/components/schemas/Error' };
const errorResponse = (description: string) => ({ description, content: { 'application/json': { schema: errorRef } } });

function pathParameters(path: string) {
  return [...path.matchAll(/\{([^}]+)\}/g)].map((m) => ({ name: m[1], in: 'path', required: true, schema: { type: 'string' } }));
}

function queryParameters(query: z.core.$ZodObject | undefined) {
  if (!query) return [];
  return Object.entries(query._zod.def.shape).map(([name, field]) => {
    const schema = toJson(field, 'input');
    const optional = z.safeParse(field, undefined).success;
    return { name, in: 'query', required: !optional, schema };
  });
}

function operationOf(route: Route, op: Operation, schemas: Record<string, JsonSchema>) {
  const name = (suffix: string) => op.operationId.charAt(0).toUpperCase() + op.operationId.slice(1) + suffix;
  const responses: Record<string, unknown> = {};
  for (const [status, answer] of Object.entries(op.responses)) {
    if ('json' in answer) {
      // A schema of responses.ts goes in once, under its own name (sandboxView -> SandboxView).
      const id = responseNames.get(answer.json) ?? name(`Response${status}`);
      schemas[id] ??= toJson(answer.json, 'output');
      responses[status] = { description: answer.description, content: { 'application/json': { schema: { $ref: `#/components/schemas/${id}` } } } };
    } else if ('bytes' in answer) {
      responses[status] = { description: answer.description, content: { [octetStream]: { schema: { type: 'string', contentMediaType: octetStream } } } };
    } else {
      responses[status] = { description: answer.description };
    }
  }
  // What every route can answer besides its own results.
  responses['400'] = errorResponse('invalid_json or validation_error (the message names the field)');
  if (route.auth !== 'none') {
    responses['401'] = errorResponse('missing_api_key');
    responses['403'] = errorResponse('invalid_api_key');
    responses['404'] = errorResponse("not_found (also another tenant's resource)");
    responses['409'] = errorResponse('invalid_state, conflict, offset_mismatch or exists');
  }
  responses['429'] = errorResponse('too_many_requests or quota_exceeded; Retry-After says when to retry');
  responses['503'] ??= errorResponse('service_unavailable, no_capacity or host_unavailable; Retry-After says when to retry');
  responses.default = errorResponse('any other error: {"error": {"code", "message"}}');
  let requestBody: unknown;
  if (op.body === 'bytes') {
    requestBody = { required: true, content: { [octetStream]: { schema: { type: 'string', contentMediaType: octetStream } } } };
  } else if (op.body) {
    const id = name('Request');
    schemas[id] = toJson(op.body, 'input');
    requestBody = { required: !z.safeParse(op.body, undefined).success, content: { 'application/json': { schema: { $ref: `#/components/schemas/${id}` } } } };
  }
  const security = route.auth === 'none' ? [] : route.auth === 'sandbox-token' ? [{ sandboxToken: [] }, { apiKey: [] }] : [{ apiKey: [] }];
  return {
    operationId: op.operationId,
    summary: op.summary,
    tags: op.tags,
    // Decided by the route table: an alias is the deprecated name of another route.
    ...(route.aliasOf ? { deprecated: true } : {}),
    security,
    parameters: [
      ...pathParameters(route.path),
      ...queryParameters(op.query),
      ...(op.headers ?? []).map((h) => ({ name: h.name, in: 'header', required: false, description: h.description, schema: { type: 'string' } })),
    ],
    ...(requestBody ? { requestBody } : {}),
    responses,
  };
}

/** The whole document, for the limits this deployment runs with. */
export function openApiDocument(limits: ControlPlaneConfig['limits'] = loadConfig().limits): Record<string, unknown> {
  const ops = operations(limits);
  const missing = routes.filter((r) => !ops[`${r.method} ${r.path}`]).map((r) => `${r.method} ${r.path}`);
  if (missing.length) throw new Error(`openapi: no operation described for ${missing.join(', ')}`);
  const schemas: Record<string, JsonSchema> = { Error: toJson(res.errorAnswer, 'output') };
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const op = ops[`${route.method} ${route.path}`] as Operation;
    const methods = paths[route.path] ?? {};
    methods[route.method.toLowerCase()] = operationOf(route, op, schemas);
    paths[route.path] = methods;
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Ephemeral Sandbox API',
      version: process.env.APP_VERSION ?? appVersion,
      description:
        'On-demand, isolated Linux sandboxes for AI agents. No call lasts longer than 29 s: long work answers 202 and is followed with GET. ' +
        `Error codes: ${[...new Set(gatewayResponses.map((g) => g.code))].join(', ')} and the handlers' own (see the README).`,
    },
    servers: [{ url: '/' }],
    components: {
      securitySchemes: {
        apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: "a tenant's API key" },
        sandboxToken: {
          type: 'apiKey',
          in: 'header',
          name: 'X-API-Key',
          description: "a sandbox's own token (SANDBOX_TOKEN inside it): heartbeat, complete and error of that sandbox only",
        },
      },
      schemas,
    },
    paths,
  };
}
