/** The `sbx` executable (see cli.ts). */
import { run } from './cli.js';

await run(process.argv.slice(2));
