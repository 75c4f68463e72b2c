/** Storage tiers of a sandbox: the hot home synced with S3, the cold prefix mounted with FUSE. */
export { createS3Client, defaultMaxSockets, type S3ClientOptions } from './s3';
export {
  hotSyncDown,
  hotSyncUp,
  defaultHotQuotaBytes,
  defaultSyncIntervalSeconds,
  defaultSyncConcurrency,
  defaultMaxEntries,
  type HotSyncOptions,
  type HotSyncReport,
  type HotEntryKind,
  type NotSyncedPath,
} from './hot-sync';
export {
  mountCold,
  unmountCold,
  isMounted,
  coldMountAlive,
  coldMountScope,
  coldMountDriverFromEnv,
  coldMountDrivers,
  s3fsCommand,
  mountpointS3Command,
  s3fsPasswdFile,
  parseProcMounts,
  defaultSecretsDir,
  type ColdMountDriver,
  type ColdMountOptions,
  type ColdCredentials,
  type UnmountOptions,
  type MountCommand,
  type MountEntry,
} from './cold-mount';
export { StorageError, QuotaExceededError, SyncError, ColdMountError, type StorageErrorCode, type FailedTransfer } from './errors';
