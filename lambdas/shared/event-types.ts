/**
 * The platform's lifecycle events by name (what events.ts publishes and the
 * CDK's bus archive and rules match). No imports: the CDK loads it.
 */

/** `source` of every event the platform puts on its bus. */
export const eventSource = 'ephemeral-sandbox';

const platformEventTypes = ['sandbox.created', 'sandbox.ready', 'sandbox.paused', 'sandbox.resumed', 'sandbox.ended', 'command.finished', 'host.lost'] as const;
export type PlatformEventType = (typeof platformEventTypes)[number];
