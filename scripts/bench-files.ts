/**
 * `npm run bench:files`: a file into and out of a sandbox through the files
 * API (presigned PUT to S3, complete: the host streams it into the sandbox;
 * download: the host streams it to S3, presigned GET) against `docker cp` of
 * the same file in and out of the same container, in one run on the same
 * machine, interleaved (BENCH_FILES_RUNS rounds, 3; BENCH_TRANSFER_MB, 1024).
 * Prints the median of each, side by side, with the ratio.
 *
 * Not included: S3 and the network as deployed (the local S3 endpoint is on
 * this machine; on AWS the bytes cross the VPC endpoint to S3).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startLocalStack } from '../lib/local/stack';
import { curl, fileSha256, untilDone } from '../test/files/files-support';
import { apiClient } from '../test/support/api-client';

const runs = Number(process.env.BENCH_FILES_RUNS ?? 3);
const transferMb = Number(process.env.BENCH_TRANSFER_MB ?? 1024);

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
async function time(fn: () => Promise<unknown> | unknown): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

const stack = await startLocalStack({ port: 0, reaperIntervalMs: 0, env: { HOT_SYNC_INTERVAL_SECONDS: '0' } });
const work = mkdtempSync(join(tmpdir(), 'esbx-bench-files-'));
try {
  const api = apiClient(stack.url, stack.apiKey);
  const created = await api.createReady('bench-files', { disk_mb: Math.max(2048, transferMb * 3), idle_timeout_seconds: 3600 });
  if (created.status !== 201) throw new Error(`create failed: ${created.text}`);
  const id: string = created.body.sandbox_id;
  const file = join(work, 'in.bin');
  execFileSync('sh', ['-c', `head -c ${transferMb * 1024 * 1024} /dev/urandom > '${file}'`]);
  const want = await fileSha256(file);

  const figures = { apiUp: [] as number[], apiDown: [] as number[], cpIn: [] as number[], cpOut: [] as number[] };
  for (let i = 0; i < runs; i++) {
    figures.apiUp.push(
      await time(async () => {
        const ticket = await api.call('POST', `/sandboxes/${id}/files/upload`, { path: `bench-api-${i}.bin` });
        if (ticket.status !== 200 && ticket.status !== 201) throw new Error(`upload ticket: ${ticket.text}`);
        if ((await curl('PUT', ticket.body.url, file)) !== 200) throw new Error('upload PUT failed');
        const done = await untilDone(() => api.call('POST', `/sandboxes/${id}/files/upload/${ticket.body.upload_id}/complete`));
        if (done.status !== 200) throw new Error(`upload failed: ${done.text}`);
      }),
    );
    const out = join(work, `out-api-${i}.bin`);
    figures.apiDown.push(
      await time(async () => {
        const started = await api.call('POST', `/sandboxes/${id}/files/download`, { path: `bench-api-${i}.bin` });
        const dl =
          started.status === 202 ? await untilDone(() => api.call('GET', `/sandboxes/${id}/files/download/${started.body.download_id}?wait=20`)) : started;
        if (dl.status !== 200 || (await curl('GET', dl.body.url, out)) !== 200) throw new Error(`download failed: ${dl.text}`);
      }),
    );
    if ((await fileSha256(out)) !== want) throw new Error('the downloaded file differs from the uploaded one');
    rmSync(out, { force: true });
    figures.cpIn.push(await time(() => execFileSync('docker', ['cp', file, `${id}:/home/agent/bench-cp-${i}.bin`])));
    figures.cpOut.push(await time(() => execFileSync('docker', ['cp', `${id}:/home/agent/bench-cp-${i}.bin`, join(work, 'out-cp.bin')])));
    rmSync(join(work, 'out-cp.bin'), { force: true });
    await api.exec(id, `rm -f bench-api-${i}.bin bench-cp-${i}.bin`);
  }
  await api.destroy(id, false);

  const rate = (ms: number) => `${(transferMb / (ms / 1000)).toFixed(0)} MiB/s (${(ms / 1000).toFixed(1)} s)`;
  console.log(
    `\nEphemeral Sandbox files benchmark (${new Date().toISOString()}; a ${transferMb} MiB file, ${runs} rounds, medians; byte-identical by sha256)\n`,
  );
  console.log(`| ${'figure'.padEnd(44)} | ${'ours'.padEnd(18)} | ${'docker cp'.padEnd(18)} | ratio |`);
  console.log(`|${'-'.repeat(46)}|${'-'.repeat(20)}|${'-'.repeat(20)}|------:|`);
  const row = (name: string, ours: number[], base: number[]) =>
    `| ${name.padEnd(44)} | ${rate(median(ours)).padEnd(18)} | ${rate(median(base)).padEnd(18)} | ${(median(ours) / median(base)).toFixed(2)}x |`;
  console.log(row('upload: presigned PUT + complete vs cp in', figures.apiUp, figures.cpIn));
  console.log(row('download: prepare + presigned GET vs cp out', figures.apiDown, figures.cpOut));
  console.log('\nours = HTTP -> local API Gateway -> handler -> SSM -> host daemon -> the sandbox, the bytes through the local S3 endpoint both ways');
  console.log('base = the docker CLI against the same engine and container');
} finally {
  rmSync(work, { recursive: true, force: true });
  await stack.close();
}
