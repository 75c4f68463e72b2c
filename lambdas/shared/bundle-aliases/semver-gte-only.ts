/**
 * Stands in for `semver` in the Lambda bundles (lib/bundling.ts
 * `handlerAlias`): `gte` only, the one function the bundled code calls.
 *
 * Why: Powertools Tracer loads aws-xray-sdk-core, whose two users of semver
 * are cls-hooked (`gte(process.versions.node, '8.0.0')`, once at load) and
 * the AWS SDK v2 patcher (`gte(AWS.VERSION, min)`, only when a v2 SDK is
 * captured; the handlers use SDK v3). The real package compiles some forty
 * regular expressions when it loads: ~13 ms of every cold start for one
 * comparison. Anything else called on this module fails loudly (it is not a
 * function), it never answers wrongly.
 */

const versionPattern = /^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$/;

interface Version {
  main: [number, number, number];
  prerelease: string[];
}

function parse(version: string): Version {
  const m = versionPattern.exec(String(version).trim());
  if (!m) throw new TypeError(`Invalid Version: ${version}`);
  return { main: [Number(m[1]), Number(m[2]), Number(m[3])], prerelease: m[4] ? m[4].split('.') : [] };
}

/** Semantic Versioning 2.0.0 precedence of two prerelease identifiers. */
function compareIdentifier(a: string, b: string): number {
  const numeric = /^\d+$/;
  if (numeric.test(a) && numeric.test(b)) return Math.sign(Number(a) - Number(b));
  if (numeric.test(a)) return -1; // numeric identifiers sort before alphanumeric ones
  if (numeric.test(b)) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

function compare(a: Version, b: Version): number {
  for (let i = 0; i < 3; i++) if (a.main[i] !== b.main[i]) return Math.sign(a.main[i]! - b.main[i]!);
  // A prerelease comes before its release; otherwise identifier by identifier, the shorter first on a tie.
  if (a.prerelease.length === 0 || b.prerelease.length === 0) return b.prerelease.length - a.prerelease.length === 0 ? 0 : a.prerelease.length === 0 ? 1 : -1;
  for (let i = 0; i < Math.min(a.prerelease.length, b.prerelease.length); i++) {
    const c = compareIdentifier(a.prerelease[i]!, b.prerelease[i]!);
    if (c !== 0) return c;
  }
  return Math.sign(a.prerelease.length - b.prerelease.length);
}

/** `a >= b` by semantic version precedence, as semver's `gte`. */
export function gte(a: string, b: string): boolean {
  return compare(parse(a), parse(b)) >= 0;
}
