/**
 * Large files through presigned S3 URLs (up to 5 GiB): POST /sandboxes/{id}/files/upload,
 * POST .../files/upload/{upload_id}/complete, POST .../files/download,
 * GET .../files/download/{download_id}. 202 when the host needs longer than the API may wait.
 */
import { completeUpload, followDownload, startDownload, startUpload } from './shared/file-transfers';
import { ApiError } from './shared/errors';
import { apiHandler, parse } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { downloadBody, transferQuery, uploadBody } from './shared/schemas';

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  const p = req.principal;
  const sandboxId = req.sandboxId();
  const param = (name: string) => req.event.pathParameters?.[name] ?? '';
  switch (`${req.event.httpMethod} ${req.event.resource}`) {
    case 'POST /sandboxes/{id}/files/upload':
      return { status: 200, body: await startUpload(p, sandboxId, parse(uploadBody, req.body ?? {})) };
    case 'POST /sandboxes/{id}/files/upload/{upload_id}/complete': {
      const done = await completeUpload(p, sandboxId, param('upload_id'), req.deadline);
      return { status: done.done ? 200 : 202, body: done.view };
    }
    case 'POST /sandboxes/{id}/files/download': {
      const done = await startDownload(p, sandboxId, parse(downloadBody, req.body ?? {}), req.deadline);
      return { status: done.done ? 200 : 202, body: done.view };
    }
    case 'GET /sandboxes/{id}/files/download/{download_id}': {
      const { wait } = parse(transferQuery, req.query, 'query');
      const done = await followDownload(p, sandboxId, param('download_id'), wait, req.deadline);
      return { status: done.done ? 200 : 202, body: done.view };
    }
    default:
      throw new ApiError(404, 'not_found', 'no route for this method and path');
  }
});
