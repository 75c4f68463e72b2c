/**
 * What travels to the host: the command line SSM runs (operator config, a
 * verb from a fixed list, an inert argument) and the request behind it,
 * inline as base64url or staged in S3. The one place that decides what may
 * reach the host's shell, so no caller text ever does.
 */
import { randomUUID } from 'node:crypto';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { encodeInline, hostVerbs, maxInlineRequestChars, stagedRequestPrefix, stagedVerbs, type HostVerb } from '../../contract/host-protocol';
import { HostDispatchError } from './host-dispatch-error';
import { logger } from './logger';

const hostAgentCommandPattern = /^[A-Za-z0-9_./=-]+(?: [A-Za-z0-9_./=-]+)*$/;

/** Refuses a host-agent command that is anything but plain words (paths, flags, KEY=value). */
export function assertHostAgentCommand(command: string): void {
  if (command.length === 0 || command.length > 1024 || !hostAgentCommandPattern.test(command)) {
    throw new HostDispatchError(
      'config_error',
      `host-agent command ${JSON.stringify(command)} is not allowed: use words of letters, digits and ._/-= separated by single spaces`,
    );
  }
}

export function assertHostVerb(verb: string): asserts verb is HostVerb {
  if (!(hostVerbs as readonly string[]).includes(verb)) throw new HostDispatchError('invalid_dispatch', `unknown host verb "${verb}"`);
}

/** `<hostAgentCommand> <verb> <arg>`; arg is `b64:...` or `s3:...`, both inert in a shell. */
export function buildHostCommandLine(hostAgentCommand: string, verb: HostVerb, arg: string): string {
  assertHostAgentCommand(hostAgentCommand);
  assertHostVerb(verb);
  if (!/^(?:b64:[A-Za-z0-9_-]*|s3:[A-Za-z0-9_\-/.]{1,512})$/.test(arg)) {
    throw new HostDispatchError('invalid_dispatch', 'host request argument must be b64:<base64url> or s3:<key>');
  }
  return `${hostAgentCommand} ${verb} ${arg}`;
}

/** Where a request travels: inline in the command line, or staged in S3 by key. */
interface EncodedRequest {
  arg: string;
  stagedKey?: string;
}

export interface RequestStaging {
  /** The command-line argument for `request`, staging it in S3 when it is large or carries secrets. */
  encode(verb: HostVerb, request: unknown): Promise<EncodedRequest>;
  /** The host-agent deletes what it fetched; this covers commands that never ran. Idempotent, never throws. */
  remove(key: string): Promise<void>;
}

/** `s3` and `bucket` are needed only for requests that must be staged. */
export function requestStaging(s3: S3Client | undefined, bucket: string | undefined): RequestStaging {
  return {
    async encode(verb, request) {
      if (request === undefined) throw new HostDispatchError('invalid_dispatch', 'host request is missing');
      let inline: string;
      try {
        inline = encodeInline(request);
      } catch (err) {
        throw new HostDispatchError('invalid_dispatch', `host request is not serializable as JSON: ${(err as Error).message}`);
      }
      // Requests with a caller's secrets never go inline: SSM keeps command text (ListCommands, the agent's disk).
      if (inline.length <= maxInlineRequestChars && !stagedVerbs.includes(verb)) return { arg: inline };
      if (!s3 || !bucket) {
        throw new HostDispatchError(
          'config_error',
          `host ${verb} request must be staged in S3 (it is ${inline.length} characters encoded, or carries secrets); configure an S3 client and bucket`,
        );
      }
      const key = `${stagedRequestPrefix}${randomUUID()}.json`;
      try {
        await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(request), ContentType: 'application/json' }));
      } catch (err) {
        throw new HostDispatchError('staging_failed', `could not stage the host request at s3://${bucket}/${key}: ${(err as Error).message}`, {
          cause: err,
        });
      }
      return { arg: `s3:${key}`, stagedKey: key };
    },
    async remove(key) {
      try {
        await s3?.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
      } catch (err) {
        logger.warn('staged host request not removed', { bucket, key, error: err });
      }
    },
  };
}
