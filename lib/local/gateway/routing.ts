/**
 * Which route of the shared table (lambdas/shared/routes.ts, the one the CDK
 * stack reads too) a request goes to, with its path parameters: pure, as API
 * Gateway's resource matching is.
 */
import { routes, type Route } from '../../../lambdas/shared/routes';

export interface RouteMatch {
  route: Route;
  /** The route's resource path, e.g. /sandboxes/{id}. */
  resourcePath: string;
  /** Decoded path parameters, or null when the route has none (as API Gateway sends it). */
  pathParameters: Record<string, string> | null;
}

/** The route for `method` on `path`, or undefined: API Gateway answers an unknown path and an unknown method alike. */
export function matchRoute(method: string, path: string): RouteMatch | undefined {
  const segments = path.split('/').filter(Boolean);
  for (const route of routes) {
    if (route.method !== method) continue;
    const parts = route.path.split('/').filter(Boolean);
    if (parts.length !== segments.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    parts.forEach((p, i) => {
      const seg = segments[i]!;
      if (p.startsWith('{') && p.endsWith('}')) {
        try {
          params[p.slice(1, -1)] = decodeURIComponent(seg);
        } catch {
          params[p.slice(1, -1)] = seg;
        }
      } else if (p !== seg) ok = false;
    });
    if (ok) return { route, resourcePath: route.path, pathParameters: Object.keys(params).length ? params : null };
  }
  return undefined;
}
