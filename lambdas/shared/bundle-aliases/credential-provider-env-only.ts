/**
 * Stands in for `@aws-sdk/credential-provider-node` in the Lambda bundles
 * (lib/bundling.ts `handlerAlias`): every SDK client's default credential
 * provider is the environment, and nothing else.
 *
 * Why: Lambda always hands a function its role's credentials in
 * AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, and the
 * default chain's first link (fromEnv) is what answers there. The rest of the
 * chain (SSO, ini files, processes, web identity, IMDS/ECS, with their nested
 * STS and SSO clients) never runs in a function, yet loading and compiling it
 * cost every cold start ~130 KB and ~25 ms. The local stack hands its
 * functions environment credentials too (lib/local/stack.ts), so it runs the
 * same bundles. Outside the bundles (the host daemon, scripts, tests) the SDK
 * keeps its full chain.
 */
import { fromEnv } from '@aws-sdk/credential-provider-env';

/** What the clients' runtime config calls as `credentialDefaultProvider(config)`. */
export const defaultProvider = (init?: Parameters<typeof fromEnv>[0]) => fromEnv(init);
