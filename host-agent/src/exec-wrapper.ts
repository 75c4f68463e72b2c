/**
 * The fixed bash program every exec runs. The caller's command never becomes
 * shell text on the host: it travels as argv elements, is reassembled inside
 * the container with printf, and is eval'ed by the same login shell that cd'ed
 * into the working directory, so `cd` sticks and `exit` behaves as in `bash -lc`.
 *
 * The final working directory leaves through a side channel: a dup of stderr
 * taken before the command runs (so its redirections cannot move it), carrying
 * a record framed by a per-exec random nonce:
 *   \x1f <nonce> : <byte length of $PWD> : <$PWD> \n
 * and a record on a dup of stdout, whose payload is the shell's exit status,
 * marks the end of the shell's stdout. Both are the last things the shell
 * writes, so once the host has read both, it has all the command wrote before
 * it ended; and the status reaches the host even when what waited for the
 * shell (the exec server's subshell, which the sandbox's own processes can
 * kill) is gone.
 */

/** bash's byte length of $PWD (under LC_ALL=C); kept out of the template so JS does not read it. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: bash's ${#PWD}, not a JS template
const pwdByteLength = '${#PWD}';
/** bash's length of the exit status the shell reports. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: bash's ${#__sbx_status}, not a JS template
const statusLength = '${#__sbx_status}';

const wrapperScript = String.raw`__sbx_nonce=$1 __sbx_cwd=$2 __sbx_fallback=$3 __sbx_io=$4
shift 4
# stdio: the FIFOs the host made for this command (not docker's pipes, which a
# background process would hold open after the command ends).
exec <"$__sbx_io.in" >"$__sbx_io.out" 2>"$__sbx_io.err" || exit 125
unset __sbx_io
# The host moves this shell into the command's cgroup, then writes "go": nothing
# may start before that, or it could escape the command's kill.
IFS= read -r __sbx_go || exit 125
[ "$__sbx_go" = go ] || exit 125
unset __sbx_go
# Started: from here the host may close stdin (the shell holds it open now).
printf '\037%s:2:go\n' "$__sbx_nonce"
printf -v __sbx_cmd %s "$@"
set --
# A login environment, as bash -l sets it up, without ~/.bash_logout: a login
# shell runs that at exit, under the command's own shell options (set -e, set -u),
# and its status would replace the command's.
if [ -r /etc/profile ]; then . /etc/profile; fi
for __sbx_f in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do
  if [ -r "$__sbx_f" ]; then . "$__sbx_f"; break; fi
done
unset __sbx_f
exec {__sbx_fd}>&2 {__sbx_ofd}>&1
__sbx_reported=
__sbx_report() {
  [ -n "$__sbx_reported" ] && return
  __sbx_reported=1
  local LC_ALL=C
  printf '\037%s:%d:%s\n' "$__sbx_nonce" "${pwdByteLength}" "$PWD" >&"$__sbx_fd"
  # The end of this shell's stdout, with the status it exits with: all it wrote is before this record.
  printf '\037%s:%d:%s\n' "$__sbx_nonce" "${statusLength}" "$__sbx_status" >&"$__sbx_ofd"
}
if [ -n "$__sbx_fallback" ] && [ ! -d "$__sbx_cwd" ]; then
  printf 'sandbox: the working directory %s no longer exists; running in %s\n' "$__sbx_cwd" "$__sbx_fallback" >&2
  __sbx_cwd=$__sbx_fallback
fi
CDPATH= cd -- "$__sbx_cwd" || exit
unset __sbx_cwd __sbx_fallback
trap '__sbx_status=$?; __sbx_report; exit "$__sbx_status"' EXIT
eval "$__sbx_cmd"
__sbx_status=$?
__sbx_report
exit "$__sbx_status"
`;

/** Largest command accepted: argv+env must stay under the kernel's ARG_MAX (2 MiB with an 8 MiB stack). */
export const maxCommandBytes = 1024 * 1024;

/** Each argv element must stay under MAX_ARG_STRLEN (128 KiB); 32,000 UTF-16 units is at most 96,000 bytes. */
const chunkUnits = 32_000;

/** Splits a string into pieces of at most `chunkUnits` UTF-16 units, never inside a surrogate pair. */
export function splitCommand(command: string): string[] {
  const chunks: string[] = [];
  let start = 0;
  while (start < command.length) {
    let end = Math.min(start + chunkUnits, command.length);
    const last = command.charCodeAt(end - 1);
    if (end < command.length && last >= 0xd800 && last <= 0xdbff) end -= 1;
    chunks.push(command.slice(start, end));
    start = end;
  }
  return chunks;
}

/** The marker prefix the wrapper writes before the final working directory. */
export function cwdMarkerPrefix(nonce: string): Buffer {
  return Buffer.from(`\x1f${nonce}:`, 'latin1');
}

/**
 * The exec's argv: `bash -c <wrapper> bash <nonce> <cwd> <fallback> <io> <command pieces...>`
 * (the wrapper sets up the login environment itself); an empty fallback means
 * a missing cwd is an error. `<io>.in`, `.out` and `.err` are the command's
 * FIFOs as the sandbox sees them; `.in` must first carry the line "go".
 *
 * @example
 *   execArgv('6f1c...', '/home/agent', 'ls -la "$HOME"')
 */
export function execArgv(nonce: string, cwd: string, command: string, cwdFallback: string, io: string): string[] {
  return ['/bin/bash', '-c', wrapperScript, 'bash', nonce, cwd, cwdFallback, io, ...splitCommand(command)];
}
