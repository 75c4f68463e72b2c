/** Storage tiers of a sandbox: the hot home synced with S3, the cold prefix mounted with FUSE. */
export { createS3Client } from './s3';
export {
  hotSyncDown,
  hotSyncUp,
  defaultSyncConcurrency,
  defaultMaxEntries,
  type HotSyncOptions,
  type HotSyncReport,
} from './hot-sync';
export {
  mountCold,
  unmountCold,
  isMounted,
  coldMountAlive,
  coldMountDriverFromEnv,
  s3fsCommand,
  mountpointS3Command,
  s3fsPasswdFile,
  parseProcMounts,
  type ColdMountOptions,
} from './cold-mount';
export { StorageError, QuotaExceededError, SyncError, ColdMountError } from './errors';
