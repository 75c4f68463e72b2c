// Seed 002's example, verbatim but for the package name. The API's URL comes from
// SANDBOX_API_URL; the sandbox is created on first use, for the user SANDBOX_USER_ID (default "default").
import { Sandbox } from '@ephemeral-sandbox/sdk';

// Initialize with just your API key
const sandbox = new Sandbox({
  apiKey: 'your-api-key'
});

// Write a file
await sandbox.writeFile('hello.js', "console.log('Hello!');");

// Run a command
const result = await sandbox.runCommand('node', ['--version']);
console.log(result.stdout);

// Read a file
const file = await sandbox.getFile('hello.js');
console.log(file.content);

// Get terminal output
const output = await sandbox.runCommand('ls', ['-la']);
console.log(output.stdout);

// Cleanup when done
await sandbox.destroy();
