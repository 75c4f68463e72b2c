// The README's SDK quick start: node sdk/examples/quick-start.mjs (SANDBOX_API_URL and SANDBOX_API_KEY set).
import { Sandbox } from '@ephemeral-sandbox/sdk';

const sbx = await Sandbox.create({ userId: 'test-user', config: { memory_mb: 1024 } }); // waits for ready
const { exitCode, stdout } = await sbx.commands.run('python3 --version');
console.log(exitCode, stdout.trim());

// A long command in the background: followed by byte offsets, no call longer than 29 s.
const build = await sbx.commands.run('for i in 1 2 3; do echo step $i; sleep 1; done', {
  background: true,
  onStdout: (s) => process.stdout.write(s),
});
console.log('exit code', (await build.wait()).exitCode);

await sbx.files.write('notes.txt', 'remember me'); // relative to /home/agent
console.log(await sbx.files.read('notes.txt', { format: 'text' }));
await sbx.destroy();
