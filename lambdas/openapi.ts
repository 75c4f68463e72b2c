/** GET /openapi.json: the API's OpenAPI 3.1 document (no key needed), for this deployment's limits. */
import { config } from './shared/config';
import { apiHandler } from './shared/http';
import { openApiDocument } from './shared/openapi';

let document: Record<string, unknown> | undefined;

export const handler = apiHandler(
  async () => {
    document ??= openApiDocument(config().limits);
    return { status: 200, body: document, headers: { 'Cache-Control': 'public, max-age=300' } };
  },
  { auth: 'none' },
);
