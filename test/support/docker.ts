/** Docker helpers for tests: inspect what the host-agent made, behind the API's back. */
import Docker from 'dockerode';

export const docker = new Docker();

export async function containerExists(name: string): Promise<boolean> {
  try {
    await docker.getContainer(name).inspect();
    return true;
  } catch {
    return false;
  }
}

export async function inspect(name: string) {
  return docker.getContainer(name).inspect();
}

/** Runs a command in a container directly (as `docker exec` would), returning stdout. */
export async function dockerExec(name: string, cmd: string[], user = 'root'): Promise<{ code: number; stdout: string }> {
  const exec = await docker.getContainer(name).exec({ Cmd: cmd, User: user, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({});
  const chunks: Buffer[] = [];
  const out = { write: (c: Buffer) => chunks.push(c) } as unknown as NodeJS.WritableStream;
  docker.modem.demuxStream(stream, out, { write: () => true } as unknown as NodeJS.WritableStream);
  await new Promise((r) => stream.on('end', r));
  const info = await exec.inspect();
  return { code: info.ExitCode ?? -1, stdout: Buffer.concat(chunks).toString('utf8') };
}
