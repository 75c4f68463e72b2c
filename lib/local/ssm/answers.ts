/**
 * What the local SSM endpoint answers, field for field as SSM does: pure
 * views of invocations, so the shape callers parse lives in one place apart
 * from how commands run.
 */
import { commandStatus, isTerminal, type Invocation } from './invocation';
import { pluginName, runShellScript, type SendCommandRequest } from './requests';

/** CommandPlugin.Output in ListCommandInvocations(Details) is shorter than the invocation's own output. */
const pluginOutputCap = 2_500;

const epochSeconds = (ms: number) => ms / 1000;
const isoOrEmpty = (ms: number | undefined) => (ms === undefined ? '' : new Date(ms).toISOString());
const noNotification = { NotificationArn: '', NotificationEvents: [], NotificationType: '' };
const noCloudWatch = { CloudWatchLogGroupName: '', CloudWatchOutputEnabled: false };

/** SendCommand's answer: the command, Pending (delivery is asynchronous, as with the agent). */
export function sentCommand(request: SendCommandRequest, commandId: string, requestedAt: number): unknown {
  return {
    Command: {
      CommandId: commandId,
      DocumentName: request.documentName,
      DocumentVersion: request.documentVersion,
      Comment: request.comment,
      ExpiresAfter: epochSeconds(requestedAt + request.timeoutSeconds * 1000),
      Parameters: request.parameters,
      InstanceIds: request.instanceIds,
      Targets: [],
      RequestedDateTime: epochSeconds(requestedAt),
      Status: 'Pending',
      StatusDetails: 'Pending',
      OutputS3Region: '',
      OutputS3BucketName: '',
      OutputS3KeyPrefix: '',
      MaxConcurrency: request.maxConcurrency,
      MaxErrors: request.maxErrors,
      TargetCount: request.instanceIds.length,
      CompletedCount: 0,
      ErrorCount: 0,
      DeliveryTimedOutCount: 0,
      ServiceRole: '',
      NotificationConfig: noNotification,
      CloudWatchOutputConfig: noCloudWatch,
      TimeoutSeconds: request.timeoutSeconds,
    },
  };
}

/** GetCommandInvocation's answer at `now`. */
export function invocationAnswer(inv: Invocation, now: number): unknown {
  const terminal = isTerminal(inv.status);
  const elapsedMs = inv.startedAt === undefined ? undefined : (inv.endedAt ?? now) - inv.startedAt;
  return {
    CommandId: inv.commandId,
    InstanceId: inv.instanceId,
    Comment: inv.comment,
    DocumentName: runShellScript,
    DocumentVersion: inv.documentVersion,
    PluginName: pluginName,
    ResponseCode: inv.responseCode,
    ExecutionStartDateTime: isoOrEmpty(inv.startedAt),
    ExecutionElapsedTime: elapsedMs === undefined ? '' : `PT${(elapsedMs / 1000).toFixed(3)}S`,
    ExecutionEndDateTime: isoOrEmpty(inv.endedAt),
    Status: inv.status,
    StatusDetails: inv.statusDetails,
    // SSM shows output once the invocation has finished.
    StandardOutputContent: terminal ? inv.stdout.text : '',
    StandardOutputUrl: '',
    StandardErrorContent: terminal ? inv.stderr.text : '',
    StandardErrorUrl: '',
    CloudWatchOutputConfig: noCloudWatch,
  };
}

/** The plugin's Output: stdout, then stderr behind SSM's marker, cut shorter than GetCommandInvocation's. */
export function pluginOutput(stdout: string, stderr: string): string {
  let out = stdout;
  if (stderr) out += `\n----------ERROR-------\n${stderr}`;
  const marker = '\n---Output truncated---';
  return out.length > pluginOutputCap ? out.slice(0, pluginOutputCap - marker.length) + marker : out;
}

/** One entry of ListCommandInvocations; `details` adds its plugin. */
export function listedInvocation(inv: Invocation, details: boolean): unknown {
  return {
    CommandId: inv.commandId,
    InstanceId: inv.instanceId,
    InstanceName: '',
    Comment: inv.comment,
    DocumentName: runShellScript,
    DocumentVersion: inv.documentVersion,
    RequestedDateTime: epochSeconds(inv.requestedAt),
    Status: inv.status,
    StatusDetails: inv.statusDetails,
    TraceOutput: '',
    StandardOutputUrl: '',
    StandardErrorUrl: '',
    CommandPlugins: details
      ? [
          {
            Name: pluginName,
            // Plugin statuses have no Cancelling.
            Status: inv.status === 'Cancelling' ? 'InProgress' : inv.status,
            StatusDetails: inv.statusDetails,
            ResponseCode: inv.responseCode,
            ...(inv.startedAt !== undefined ? { ResponseStartDateTime: epochSeconds(inv.startedAt) } : {}),
            ...(inv.endedAt !== undefined ? { ResponseFinishDateTime: epochSeconds(inv.endedAt) } : {}),
            Output: isTerminal(inv.status) ? pluginOutput(inv.stdout.text, inv.stderr.text) : '',
            StandardOutputUrl: '',
            StandardErrorUrl: '',
            OutputS3Region: '',
            OutputS3BucketName: '',
            OutputS3KeyPrefix: '',
          },
        ]
      : [],
    ServiceRole: '',
    NotificationConfig: noNotification,
    CloudWatchOutputConfig: noCloudWatch,
  };
}

/** One entry of ListCommands: what anyone with ssm:ListCommands reads, the command text included. */
export function listedCommand(commandId: string, invocations: readonly Invocation[]): unknown {
  const first = invocations[0]!;
  return {
    CommandId: commandId,
    DocumentName: runShellScript,
    DocumentVersion: first.documentVersion,
    Comment: first.comment,
    Parameters: {
      commands: first.commands,
      workingDirectory: [first.workingDirectory],
      executionTimeout: [String(first.executionTimeoutSeconds)],
    },
    InstanceIds: invocations.map((i) => i.instanceId),
    RequestedDateTime: epochSeconds(first.requestedAt),
    Status: commandStatus(invocations),
    TargetCount: invocations.length,
    CompletedCount: invocations.filter((i) => isTerminal(i.status)).length,
  };
}
