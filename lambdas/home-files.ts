/**
 * A user's home when no sandbox runs (its synced copy in S3, the caller's
 * tenant only): GET /users/{user_id}/home/files?path=, GET .../home/files/list,
 * POST .../home/files/download.
 */
import { ApiError } from './shared/errors';
import { fileBytesAnswer, requireBinaryAccept } from './shared/file-answers';
import { downloadHomeFile, listHomeFiles, readHomeFile } from './shared/home-files';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { filePathQuery, homeDownloadBody, listFilesQuery, userIdSchema } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const p = req.principal;
  const user = userIdSchema.safeParse(req.event.pathParameters?.user_id ?? '');
  if (!user.success) throw new ApiError(404, 'not_found', `user ${String(req.event.pathParameters?.user_id).slice(0, 64)} not found`);
  const userId = user.data;
  switch (`${req.event.httpMethod} ${req.event.resource}`) {
    case 'GET /users/{user_id}/home/files': {
      const { path } = parse(filePathQuery, req.query, 'query');
      requireBinaryAccept(req.header('accept'));
      const file = await readHomeFile(p, userId, path);
      const lag: Record<string, string> = file.homeCopy.may_lag
        ? {
            'X-Home-Copy-May-Lag': 'true',
            'X-Home-Copy-Sandboxes': (file.homeCopy.sandboxes ?? []).map((s) => s.sandbox_id).join(','),
            'X-Home-Sync-Interval-Seconds': String(file.homeCopy.sync_interval_seconds),
          }
        : { 'X-Home-Copy-May-Lag': 'false' };
      return fileBytesAnswer(file, lag);
    }
    case 'GET /users/{user_id}/home/files/list':
      return { status: 200, body: await listHomeFiles(p, userId, parse(listFilesQuery, req.query, 'query')) };
    case 'POST /users/{user_id}/home/files/download':
      return { status: 200, body: await downloadHomeFile(p, userId, parse(homeDownloadBody, req.body ?? {}).path) };
    default:
      throw new ApiError(404, 'not_found', 'no route for this method and path');
  }
});
