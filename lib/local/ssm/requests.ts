/**
 * What the local SSM endpoint accepts, and SSM's own words when it does not:
 * reading a request body into typed values is pure, so each refusal
 * (ValidationException, InvalidParameters, InvalidInstanceId...) is decided
 * here, before anything runs, and can be tested without a server.
 */
import { ssmInstanceIdPattern } from '../../../contract/ids';
import { AwsJsonError } from '../aws-json';

/** The only document this endpoint runs, and the plugin inside it. */
export const runShellScript = 'AWS-RunShellScript';
export const pluginName = 'aws:runShellScript';

export type RequestBody = Record<string, unknown>;

const commandIdPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** AWS-RunShellScript's allowedPattern for executionTimeout: 1..172800. */
const executionTimeoutPattern = /^(?:[1-9][0-9]{0,4}|1[0-6][0-9]{4}|17[01][0-9]{3}|172[0-7][0-9]{2}|172800)$/;
/** ListCommands and ListCommandInvocations answer at most this many a page. */
const maxPageSize = 50;

/** Options SSM has that this endpoint does not emulate: refused, not ignored. */
const unsupportedSendCommandFields = [
  'Targets',
  'DocumentHash',
  'DocumentHashType',
  'OutputS3Region',
  'OutputS3BucketName',
  'OutputS3KeyPrefix',
  'ServiceRoleArn',
  'NotificationConfig',
  'AlarmConfiguration',
];

export function validation(message: string): AwsJsonError {
  return new AwsJsonError('ValidationException', `1 validation error detected: ${message}`);
}

export function optionalString(body: RequestBody, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new AwsJsonError('SerializationException', `${key} must be a string`);
  return v;
}

export function requiredString(body: RequestBody, key: string): string {
  const v = optionalString(body, key);
  if (v === undefined) throw validation(`Value null at '${key}' failed to satisfy constraint: Member must not be null`);
  return v;
}

function optionalInteger(body: RequestBody, key: string): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new AwsJsonError('SerializationException', `${key} must be an integer`);
  return v;
}

export function optionalStringArray(body: RequestBody, key: string): string[] | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new AwsJsonError('SerializationException', `${key} must be a list of strings`);
  }
  return v as string[];
}

export function checkCommandId(id: string): void {
  if (!commandIdPattern.test(id)) {
    throw new AwsJsonError('InvalidCommandId', `Command id "${id}" is not a valid command id`);
  }
}

/** A target's id as reads (GetCommandInvocation, ListCommandInvocations) check it: its form only. */
export function checkInstanceId(id: string): void {
  if (!ssmInstanceIdPattern.test(id)) throw new AwsJsonError('InvalidInstanceId', `Instance id ${id} is not valid`);
}

/** Filters, which this endpoint does not emulate: refused, not ignored. */
export function refuseFilters(body: RequestBody): void {
  if (body.Filters !== undefined && body.Filters !== null) throw validation('Filters are not supported by the local SSM endpoint');
}

/** Where a listing's page starts and how long it is. */
export interface Page {
  offset: number;
  maxResults: number;
}

/** MaxResults and NextToken of a List* call; the token is the offset, opaque to callers as SSM's is. */
export function parsePage(body: RequestBody): Page {
  const maxResults = optionalInteger(body, 'MaxResults') ?? maxPageSize;
  if (maxResults < 1 || maxResults > maxPageSize) {
    throw validation(`Value '${maxResults}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and ${maxPageSize}`);
  }
  const nextToken = optionalString(body, 'NextToken');
  let offset = 0;
  if (nextToken !== undefined) {
    offset = Number(Buffer.from(nextToken, 'base64url').toString('utf8'));
    if (!Number.isInteger(offset) || offset < 0) throw new AwsJsonError('InvalidNextToken', 'The specified token is not valid');
  }
  return { offset, maxResults };
}

/** This page of `all`, and the token of the next one when there is more. */
export function takePage<T>(all: readonly T[], { offset, maxResults }: Page): { items: T[]; nextToken?: string } {
  const items = all.slice(offset, offset + maxResults);
  const end = offset + maxResults;
  return end < all.length ? { items, nextToken: Buffer.from(String(end)).toString('base64url') } : { items };
}

/** A SendCommand the endpoint will run, read and checked. */
export interface SendCommandRequest {
  documentName: string;
  documentVersion: string;
  instanceIds: string[];
  timeoutSeconds: number;
  comment: string;
  /** As sent: SendCommand's answer echoes them. */
  parameters: RequestBody;
  commands: string[];
  workingDirectory: string;
  executionTimeoutSeconds: number;
  maxConcurrency: string;
  maxErrors: string;
}

/** Reads a SendCommand body; `isRegistered` says which instances run commands here. */
export function parseSendCommand(body: RequestBody, isRegistered: (instanceId: string) => boolean): SendCommandRequest {
  for (const field of unsupportedSendCommandFields) {
    if (body[field] !== undefined && body[field] !== null) {
      throw validation(`${field} is not supported by the local SSM endpoint; send to InstanceIds without it`);
    }
  }
  const cloudWatch = body.CloudWatchOutputConfig as { CloudWatchOutputEnabled?: boolean } | undefined;
  if (cloudWatch?.CloudWatchOutputEnabled) throw validation('CloudWatch output is not supported by the local SSM endpoint');

  const documentName = requiredString(body, 'DocumentName');
  if (documentName !== runShellScript) {
    throw new AwsJsonError('InvalidDocument', `Document with name ${documentName} does not exist (the local SSM endpoint runs only ${runShellScript})`);
  }
  const documentVersion = optionalString(body, 'DocumentVersion') ?? '$DEFAULT';
  if (!['$DEFAULT', '$LATEST', '1'].includes(documentVersion)) {
    throw new AwsJsonError('InvalidDocumentVersion', `Document version ${documentVersion} does not exist for ${runShellScript}`);
  }
  const instanceIds = optionalStringArray(body, 'InstanceIds');
  if (!instanceIds || instanceIds.length === 0) {
    throw validation("Value at 'instanceIds' failed to satisfy constraint: Member must have length greater than or equal to 1");
  }
  if (instanceIds.length > 50) {
    throw validation("Value at 'instanceIds' failed to satisfy constraint: Member must have length less than or equal to 50");
  }
  if (new Set(instanceIds).size !== instanceIds.length) throw new AwsJsonError('DuplicateInstanceId', 'Instance Id is duplicated');
  for (const id of instanceIds) {
    if (!isRegistered(id)) throw new AwsJsonError('InvalidInstanceId', `Instances [[${id}]] not in a valid state for account`);
  }
  const timeoutSeconds = optionalInteger(body, 'TimeoutSeconds') ?? 3600;
  if (timeoutSeconds < 30 || timeoutSeconds > 2_592_000) {
    throw validation(`Value '${timeoutSeconds}' at 'timeoutSeconds' failed to satisfy constraint: Member must have value between 30 and 2592000`);
  }
  const comment = optionalString(body, 'Comment') ?? '';
  if (comment.length > 100) {
    throw validation("Value at 'comment' failed to satisfy constraint: Member must have length less than or equal to 100");
  }

  const rawParameters = body.Parameters ?? {};
  if (typeof rawParameters !== 'object' || rawParameters === null || Array.isArray(rawParameters)) {
    throw new AwsJsonError('SerializationException', 'Parameters must be a map of string lists');
  }
  const parameters = rawParameters as RequestBody;
  for (const key of Object.keys(parameters)) {
    if (!['commands', 'workingDirectory', 'executionTimeout'].includes(key)) {
      throw new AwsJsonError('InvalidParameters', `Parameter "${key}" is not defined in document ${runShellScript}`);
    }
  }
  const commands = optionalStringArray(parameters, 'commands');
  if (!commands || commands.length === 0) {
    throw new AwsJsonError('InvalidParameters', 'Parameter "commands" is required and must list at least one command');
  }
  const workingDirectory = optionalStringArray(parameters, 'workingDirectory') ?? [''];
  if (workingDirectory.length !== 1) {
    throw new AwsJsonError('InvalidParameters', 'Parameter "workingDirectory" takes exactly one value');
  }
  const executionTimeout = optionalStringArray(parameters, 'executionTimeout') ?? ['3600'];
  if (executionTimeout.length !== 1 || !executionTimeoutPattern.test(executionTimeout[0] ?? '')) {
    throw new AwsJsonError(
      'InvalidParameters',
      `Parameter "executionTimeout" must be one whole number of seconds between 1 and 172800, got ${JSON.stringify(executionTimeout)}`,
    );
  }
  return {
    documentName,
    documentVersion,
    instanceIds,
    timeoutSeconds,
    comment,
    parameters,
    commands,
    workingDirectory: workingDirectory[0] ?? '',
    executionTimeoutSeconds: Number(executionTimeout[0]),
    // Read before the command exists: a malformed one is refused, not answered after the command started.
    maxConcurrency: optionalString(body, 'MaxConcurrency') ?? '50',
    maxErrors: optionalString(body, 'MaxErrors') ?? '0',
  };
}
