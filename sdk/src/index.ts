/**
 * @ephemeral-sandbox/sdk: isolated Linux sandboxes for AI agents.
 *
 * @example
 * import { Sandbox } from '@ephemeral-sandbox/sdk';
 * const sbx = await Sandbox.create({ userId: 'u1' });   // SANDBOX_API_KEY, SANDBOX_API_URL
 * const { stdout } = await sbx.commands.run('python3 --version');
 * await sbx.destroy();
 */
export { Sandbox, shellQuote, type SandboxOptions } from './sandbox.js';
export { CommandHandle, Commands, newCommandId, type CommandResult, type RunOptions } from './commands.js';
export { Files, inlineMaxBytes, type Progress, type TransferOptions, type TransferResult } from './files.js';
export { ApiClient, backoffMs, type ClientOptions, type RequestOptions } from './http.js';
export * from './errors.js';
export type * from './types.js';
