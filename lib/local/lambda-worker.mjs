// One Lambda execution environment of the local stack: a worker thread that
// loads one handler bundle (dist/lambdas/<name>.mjs, what the CDK deploys) and
// runs one invocation at a time, like Lambda does. The main thread terminates
// the worker at the function's timeout, so work after it never happens.
import { parentPort, workerData } from 'node:worker_threads';

const { bundle, functionName, memoryMb } = workerData;
const { handler } = await import(bundle);

parentPort.on('message', async (msg) => {
  const { id, event, requestId, deadline } = msg;
  const context = {
    callbackWaitsForEmptyEventLoop: true,
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:local:000000000000:function:${functionName}`,
    memoryLimitInMB: String(memoryMb),
    awsRequestId: requestId,
    logGroupName: `/aws/lambda/${functionName}`,
    logStreamName: 'local',
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: () => undefined,
    fail: () => undefined,
    succeed: () => undefined,
  };
  try {
    const result = await handler(event, context);
    parentPort.postMessage({ id, ok: true, payload: JSON.stringify(result ?? null) });
  } catch (err) {
    parentPort.postMessage({
      id,
      ok: false,
      errorType: err?.name ?? 'Error',
      errorMessage: err?.message ?? String(err),
    });
  }
});
parentPort.postMessage({ ready: true });
