#!/usr/bin/env bash
# Starts a long-running daemon (the Docker engine) in a session of its own, output to LOG:
#   start-daemon.sh LOG COMMAND [ARGS...]
# A session of its own means no process group of the caller: Ctrl-C on `npm start`
# (SIGINT to its whole foreground process group) must not stop the Docker engine,
# which the stack still needs to remove its sandboxes and which outlives the stack.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 LOG COMMAND [ARGS...]" >&2
  exit 2
fi
log="$1"
shift
# It outlives the caller, so nothing of the caller's that may go away stays with it: the working directory is /, and
# TMPDIR is unset (dockerd and containerd keep runc's exec state in it: started from a test whose temporary directory
# was removed afterwards, every `docker exec` failed with "open $TMPDIR/runc-process...: no such file or directory").
cd /
# -f: always fork, so the daemon is never the caller's group leader; stdin from /dev/null so no terminal reaches it.
env -u TMPDIR setsid -f "$@" >>"$log" 2>&1 </dev/null
