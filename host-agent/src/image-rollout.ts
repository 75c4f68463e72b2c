/**
 * The sandbox image on a host: pulled through the Engine API with the
 * registry's credentials (an ECR token from the instance role; no docker
 * login, no credential helper in the daemon's path), resolved to the digest
 * the host actually holds (`repo@sha256:...`, what it records and creates
 * name), and images of the same repository that nothing uses pruned.
 */
import type { AuthorizationData, ECRClient } from '@aws-sdk/client-ecr';
import { DockerApiError, type DockerClient, type ImageInspect, type RegistryCredentials } from './docker';
import { HostAgentError } from './errors';
import { logger } from '../../lambdas/shared/logger';

/** Credentials for the registry `image` lives in; undefined when it needs none. */
export type RegistryAuth = (image: string) => Promise<RegistryCredentials | undefined>;

/** account.dkr.ecr.region.amazonaws.com (and .com.cn): the registries ECR tokens open. */
const ecrRegistryPattern = /^\d{12}\.dkr\.ecr(?:-fips)?\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$/;

/** The registry host of an image reference, when it names one (`docker.io` images name none). */
export function registryOf(image: string): string | undefined {
  const first = image.split('/')[0] ?? '';
  return image.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost') ? first : undefined;
}

export function isEcrImage(image: string): boolean {
  return ecrRegistryPattern.test(registryOf(image) ?? '');
}

/** `repo` of `repo:tag`, `repo@sha256:...` or `repo` (a port in the registry host is not a tag). */
export function repositoryOf(image: string): string {
  const noDigest = image.split('@')[0]!;
  const lastSlash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return colon > lastSlash ? noDigest.slice(0, colon) : noDigest;
}

/**
 * The `repo@sha256:...` of an image the host holds: the reference itself when it
 * already names a digest, else the digest the registry gave it; undefined for a
 * local build (no registry digest).
 */
export function digestRefOf(image: string, info: Pick<ImageInspect, 'RepoDigests'>): string | undefined {
  if (/@sha256:[0-9a-f]{64}$/.test(image)) return image;
  const repository = repositoryOf(image);
  return (info.RepoDigests ?? []).find((d) => repositoryOf(d) === repository);
}

/** Tokens are valid 12 hours; one is fetched again this long before it expires. */
const tokenRefreshMarginMs = 30 * 60_000;

/**
 * ECR credentials from GetAuthorizationToken (the instance role's
 * ecr:GetAuthorizationToken), cached until shortly before they expire.
 * Images outside ECR get none.
 *
 * @example
 *   const auth = ecrRegistryAuth(new ECRClient({}));
 *   await docker.pullImage(image, await auth(image));
 */
export function ecrRegistryAuth(ecr: () => Promise<Pick<ECRClient, 'send'>>, now: () => number = Date.now): RegistryAuth {
  const cache = new Map<string, { credentials: RegistryCredentials; expiresAt: number }>();
  return async (image) => {
    if (!isEcrImage(image)) return undefined;
    const registry = registryOf(image)!;
    const cached = cache.get(registry);
    if (cached && cached.expiresAt - tokenRefreshMarginMs > now()) return cached.credentials;
    const { GetAuthorizationTokenCommand } = await import('@aws-sdk/client-ecr');
    let data: AuthorizationData | undefined;
    try {
      data = (await (await ecr()).send(new GetAuthorizationTokenCommand({}))).authorizationData?.[0];
    } catch (error) {
      throw new HostAgentError('unavailable', `cannot get an ECR token for ${registry}: ${(error as Error).message}`);
    }
    const decoded = Buffer.from(data?.authorizationToken ?? '', 'base64').toString('utf8');
    const split = decoded.indexOf(':');
    if (split <= 0) throw new HostAgentError('unavailable', `ECR answered no usable authorization token for ${registry}`);
    const credentials = { username: decoded.slice(0, split), password: decoded.slice(split + 1), serveraddress: data?.proxyEndpoint ?? `https://${registry}` };
    cache.set(registry, { credentials, expiresAt: data?.expiresAt?.getTime() ?? now() + 60 * 60_000 });
    return credentials;
  };
}

let defaultAuth: RegistryAuth | undefined;
/** The host's own: ECR through the instance role (region from AWS_REGION), one client for the process. */
export function hostRegistryAuth(): RegistryAuth {
  defaultAuth ??= ecrRegistryAuth(async () => new (await import('@aws-sdk/client-ecr')).ECRClient({}));
  return defaultAuth;
}

export interface PresentImage {
  id: string;
  /** `repo@sha256:...` the host holds (undefined for a local build). */
  digestRef: string | undefined;
  pulled: boolean;
}

/**
 * Makes sure `image` is on the host: inspected, else pulled (with the
 * registry's credentials) and inspected again.
 */
export async function ensureImagePresent(docker: DockerClient, image: string, auth: RegistryAuth = hostRegistryAuth()): Promise<PresentImage> {
  try {
    const info = await docker.inspectImage(image);
    return { id: info.Id, digestRef: digestRefOf(image, info), pulled: false };
  } catch (error) {
    if (!(error instanceof DockerApiError && error.statusCode === 404)) throw error;
  }
  try {
    await docker.pullImage(image, await auth(image));
  } catch (error) {
    throw new HostAgentError('docker_error', `image ${image} is not on this host and could not be pulled: ${(error as Error).message}`);
  }
  const info = await docker.inspectImage(image);
  return { id: info.Id, digestRef: digestRefOf(image, info), pulled: true };
}

/**
 * Removes the images of `repository` other than `keep` (image ids) that no
 * container uses (running or not: a paused sandbox's stopped container
 * still needs its image). Names are removed one by one, never forced: the
 * engine refuses (409) an image a container took meanwhile, and that one is
 * left for the next pass. Answers the names removed.
 */
export async function pruneImages(docker: DockerClient, repository: string, keep: readonly string[]): Promise<string[]> {
  const [images, containers] = await Promise.all([docker.listImages({ reference: [repository] }), docker.listContainers({}, true)]);
  const inUse = new Set([...keep, ...containers.map((c) => c.ImageID)]);
  const removed: string[] = [];
  for (const image of images) {
    if (inUse.has(image.Id)) continue;
    const names = [...(image.RepoTags ?? []), ...(image.RepoDigests ?? [])].filter((n) => repositoryOf(n) === repository && n !== '<none>:<none>');
    for (const name of names) {
      try {
        await docker.removeImage(name);
        removed.push(name);
      } catch (error) {
        // Gone already (404) or just taken by a container (409): nothing to do now.
        if (!(error instanceof DockerApiError && (error.statusCode === 404 || error.statusCode === 409))) throw error;
      }
    }
  }
  return removed;
}

/** The fleet's current sandbox image reference, as a host reads it at each image pass. */
export type DesiredImage = () => Promise<string>;

/** GetParameter through the project's SSM client (AWS_ENDPOINT_URL_SSM locally: the local SSM endpoint). */
async function readParameter(name: string): Promise<string | undefined> {
  const [{ GetParameterCommand }, { ssm }] = await Promise.all([import('@aws-sdk/client-ssm'), import('../../lambdas/shared/clients/ssm')]);
  return (await ssm().send(new GetParameterCommand({ Name: name }))).Parameter?.Value;
}

/**
 * Where a running host learns the image a deploy rolled out: the SSM parameter
 * `parameterName` (SANDBOX_IMAGE_PARAMETER; CDK writes it with the image URI the
 * functions get as SANDBOX_IMAGE), read at every pass. The host's own
 * SANDBOX_IMAGE is fixed at launch, so without it a running host would never
 * pull a new image. Without a parameter name (a development machine) it is
 * `initial`; a read that fails (SSM unreachable, throttled) answers the last
 * reference read, so the host keeps its image rather than losing it.
 */
export function desiredImageSource(o: {
  parameterName: string | undefined;
  initial: string;
  read?: (name: string) => Promise<string | undefined>;
}): DesiredImage {
  const read = o.read ?? readParameter;
  let last = o.initial;
  return async () => {
    if (o.parameterName === undefined) return last;
    try {
      const value = (await read(o.parameterName))?.trim();
      if (value) last = value;
      else logger.warn('daemon: the sandbox image parameter is empty; keeping the image reference read before', { parameter: o.parameterName, image: last });
    } catch (err) {
      logger.warn('daemon: cannot read the sandbox image parameter; keeping the image reference read before', { parameter: o.parameterName, image: last, err });
    }
    return last;
  };
}

/** What a host records of its sandbox image: the reference it was configured with, the digest it resolved it to. */
export interface HostImage {
  id: string;
  /** `repo@sha256:...`; the reference itself for a local build (no registry, no digest). */
  digestRef: string;
  ref: string;
}

/**
 * Pulls the configured image ahead of any create (at daemon start and every
 * pass after) and answers what the host records: creates name the digest,
 * placement prefers hosts that have it.
 */
export async function prepareHostImage(docker: DockerClient, ref: string, auth: RegistryAuth = hostRegistryAuth()): Promise<HostImage> {
  const present = await ensureImagePresent(docker, ref, auth);
  return { id: present.id, digestRef: present.digestRef ?? ref, ref };
}
