/** The S3 client, created once per process (endpoint from AWS_ENDPOINT_URL_S3 when set). */
import { S3Client } from '@aws-sdk/client-s3';

let client: S3Client | undefined;

export function s3(): S3Client {
  client ??= new S3Client({
    forcePathStyle: process.env.S3_FORCE_PATH_STYLE === 'true',
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  return client;
}
