/**
 * The release both tiers report: the API's health and OpenAPI document, the
 * version a host registers with. package.json holds it; a bundle carries only
 * this field of it (esbuild keeps what is imported).
 */
export { version as appVersion } from '../package.json';
