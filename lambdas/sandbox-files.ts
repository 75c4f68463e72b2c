/**
 * Files in a running sandbox: GET / PUT / DELETE /sandboxes/{id}/files?path=,
 * GET .../files/list, GET .../files/stat, POST .../files/mkdir, POST .../files/move.
 * Bytes are application/octet-stream both ways (up to FILES_INLINE_MAX_BYTES).
 */
import { ApiError } from './shared/errors';
import { fileBytesAnswer, requireBinaryAccept } from './shared/file-answers';
import { deleteSandboxFile, listSandboxFiles, makeSandboxDirectory, moveSandboxFile, readSandboxFile, statSandboxFile, writeSandboxFile } from './shared/files';
import { apiHandler, parse, type ApiRequest, type ApiResult } from './shared/http';
import { requireApiKey } from './shared/sandboxes';
import { deleteFileQuery, filePathQuery, listFilesQuery, mkdirBody, moveBody, writeFileQuery } from './shared/schemas';

async function route(req: ApiRequest, sandboxId: string): Promise<ApiResult> {
  const p = req.principal;
  switch (`${req.event.httpMethod} ${req.event.resource}`) {
    case 'GET /sandboxes/{id}/files': {
      const { path } = parse(filePathQuery, req.query, 'query');
      requireBinaryAccept(req.header('accept'));
      return fileBytesAnswer(await readSandboxFile(p, sandboxId, path, req.deadline));
    }
    case 'PUT /sandboxes/{id}/files':
      return { status: 200, body: await writeSandboxFile(p, sandboxId, parse(writeFileQuery, req.query, 'query'), req.rawBody(), req.deadline) };
    case 'DELETE /sandboxes/{id}/files':
      return { status: 200, body: await deleteSandboxFile(p, sandboxId, parse(deleteFileQuery, req.query, 'query'), req.deadline) };
    case 'GET /sandboxes/{id}/files/list':
      return { status: 200, body: await listSandboxFiles(p, sandboxId, parse(listFilesQuery, req.query, 'query'), req.deadline) };
    case 'GET /sandboxes/{id}/files/stat':
      return { status: 200, body: await statSandboxFile(p, sandboxId, parse(filePathQuery, req.query, 'query').path, req.deadline) };
    case 'POST /sandboxes/{id}/files/mkdir':
      return { status: 200, body: await makeSandboxDirectory(p, sandboxId, parse(mkdirBody, req.body ?? {}), req.deadline) };
    case 'POST /sandboxes/{id}/files/move':
      return { status: 200, body: await moveSandboxFile(p, sandboxId, parse(moveBody, req.body ?? {}), req.deadline) };
    default:
      throw new ApiError(404, 'not_found', 'no route for this method and path');
  }
}

export const handler = apiHandler(async (req) => {
  requireApiKey(req.principal);
  return route(req, req.sandboxId());
});
