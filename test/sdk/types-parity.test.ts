/**
 * One description of the API's answers: the zod response schemas
 * (lambdas/shared/responses.ts), which validate real answers in the tests and
 * generate docs/openapi.json, against
 * - the SDK's view types (sdk/src/types.ts, dependency-free): the same values
 *   both ways (the SDK never mistypes a real answer, nor promises a field the
 *   API does not send);
 * - the views the handlers build (toView, toCommandView): every one of them
 *   is an answer the schema allows.
 * Checked by the compiler (npm test runs tsc over test/): a field added,
 * renamed or retyped in one place and not the others fails the suite.
 */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { z } from 'zod';
import type * as api from '../../lambdas/shared/responses';
import type { CommandOutputView, CommandView } from '../../lambdas/shared/commands';
import type { CommandStatus } from '../../lambdas/shared/command-state';
import type { SandboxView } from '../../lambdas/shared/sandbox-record';
import type { SandboxStatus, StopReason } from '../../lambdas/shared/sandbox-state';
import type * as sdk from '../../sdk/src/types';

/** True when A and B accept the same values (each assignable to the other). */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** True when every value of A is a value of B. */
type Fits<A, B> = [A] extends [B] ? true : false;
type Answer<S extends z.ZodType> = z.output<S>;

const parity = {
  sandbox: true as Same<sdk.SandboxInfo, Answer<typeof api.sandboxView>>,
  command: true as Same<sdk.CommandInfo, Answer<typeof api.commandView>>,
  commandOutput: true as Same<sdk.CommandOutputPage, Answer<typeof api.commandWithOutput>>,
  fileEntry: true as Same<sdk.FileEntry, Answer<typeof api.fileEntry>>,
  written: true as Same<sdk.WrittenFile, Answer<typeof api.fileWritten>>,
  sandboxStatus: true as Same<sdk.SandboxStatus, SandboxStatus>,
  stopReason: true as Same<sdk.StopReason, StopReason>,
  commandStatus: true as Same<sdk.CommandStatus, CommandStatus>,
  sandboxView: true as Fits<SandboxView, Answer<typeof api.sandboxView>>,
  commandView: true as Fits<CommandView, Answer<typeof api.commandView>>,
  commandOutputView: true as Fits<CommandView & CommandOutputView, Answer<typeof api.commandWithOutput>>,
} satisfies Record<string, true>;

it('the SDK view types and the API response schemas describe the same answers (checked by tsc)', () => {
  assert.ok(Object.values(parity).every((v) => v === true));
});
