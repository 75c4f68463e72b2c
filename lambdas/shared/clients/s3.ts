/** The S3 client, created once per process (endpoint from AWS_ENDPOINT_URL_S3 when set). */
import { S3Client } from '@aws-sdk/client-s3';
import { boundByCallDeadline } from './deadline';
import { traced } from './capture';
import { timeSdkClient } from '../timing';

let client: S3Client | undefined;

export function s3(): S3Client {
  if (client) return client;
  const base = new S3Client({
    forcePathStyle: process.env.S3_FORCE_PATH_STYLE === 'true',
    // requestTimeout is the socket's idle time, not the transfer's: big objects keep flowing.
    requestHandler: { connectionTimeout: 3_000, requestTimeout: 30_000, throwOnRequestTimeout: true },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  timeSdkClient(base, 's3');
  client = traced(boundByCallDeadline(base, 'S3'));
  return client;
}
