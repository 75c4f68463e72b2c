#!/usr/bin/env bash
# Smoke test of the sandbox image, run the way the host-agent runs sandboxes
# (host-agent/src/create.ts): --init, non-root, every capability dropped, no-new-privileges,
# read-only root with tmpfs /tmp and /run, pids and memory limits, bind-mounted empty home
# and cold directories, commands via `bash -lc`.
#
#   sandbox-image/smoke.sh [--no-build]
#
# Builds the image first (scripts/build-image.sh: from the offline base, skipped when up to
# date) unless --no-build. SANDBOX_IMAGE picks the tag (default ephemeral-sandbox:latest).
# Only loopback traffic: the page and the fake API are served inside the container.
# Exits 0 when every check passes, 1 otherwise, with a summary either way.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${SANDBOX_IMAGE:-ephemeral-sandbox:latest}"
build=1
for arg in "$@"; do
  case "${arg}" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "smoke: unknown argument '${arg}' (usage: sandbox-image/smoke.sh [--no-build])" >&2; exit 2 ;;
  esac
done

log() { printf '[smoke] %s\n' "$*"; }
started_all="$(date +%s)"

passed=0
failed=0
failures=()
# check NAME COMMAND...: run a check, keep its last output line as the evidence.
check() {
  local name="$1"; shift
  local out rc
  out="$("$@" 2>&1)"; rc=$?
  if [ "${rc}" = 0 ]; then
    passed=$((passed + 1))
    printf '  ok    %-28s %s\n' "${name}" "$(printf '%s' "${out}" | tail -n 1 | cut -c1-110)"
  else
    failed=$((failed + 1))
    failures+=("${name}")
    printf '  FAIL  %-28s (exit %s)\n' "${name}" "${rc}"
    printf '%s\n' "${out}" | tail -n 15 | sed 's/^/          | /'
  fi
}

containers=()
tmp_dirs=()
cleanup() {
  local c d
  for c in "${containers[@]}"; do docker rm -f "${c}" >/dev/null 2>&1 || log "could not remove container ${c}"; done
  for d in "${tmp_dirs[@]}"; do rm -rf "${d}"; done
}
trap cleanup EXIT

if [ "${build}" = 1 ]; then
  log "building ${image} (skipped when up to date)"
  started="$(date +%s)"
  SANDBOX_IMAGE="${image}" bash "${repo_root}/scripts/build-image.sh" || { log "FAILED: the image did not build"; exit 1; }
  log "build step took $(( $(date +%s) - started )) s"
fi
docker image inspect "${image}" >/dev/null 2>&1 || { log "FAILED: no image ${image} (run scripts/build-image.sh)"; exit 1; }

# A directory the sandbox user can write, as the host-agent prepares home and cold storage.
make_user_dir() {
  local d
  d="$(mktemp -d /tmp/sandbox-smoke.XXXXXX)"
  tmp_dirs+=("${d}")
  if [ "$(id -u)" = 0 ]; then chown 1000:1000 "${d}"; else chmod 0777 "${d}"; fi
  printf '%s' "${d}"
}
home_dir="$(make_user_dir)"
cold_dir="$(make_user_dir)"
suffix="$$-$(date +%s%N | tail -c 7)"
token="tok-smoke-${suffix}"

# run_sandbox NAME [extra docker run flags...]: start a container as the host-agent does.
run_sandbox() {
  local name="$1"; shift
  containers+=("${name}")
  docker run -d --name "${name}" \
    --label dev.ephemeral-sandbox.owner=ephemeral-sandbox \
    --label dev.ephemeral-sandbox.sandbox-id=smoke \
    --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges \
    --read-only --tmpfs /tmp:rw,exec,nosuid,nodev,size=512m --tmpfs /run:rw,nosuid,nodev,noexec,size=16m \
    --pids-limit 512 --memory 1g --memory-swap 1g --ulimit core=0 --ipc private \
    -v "${home_dir}:/home/agent" -v "${cold_dir}:/data/cold" \
    -v "${repo_root}/sandbox-image/smoke:/smoke:ro" \
    -e SANDBOX_API_URL=http://127.0.0.1:8124 -e SANDBOX_ID=sbx-smoke -e SANDBOX_TOKEN="${token}" \
    "$@" "${image}" sleep infinity >/dev/null
}
sbx="sbx-smoke-${suffix}"
if ! run_sandbox "${sbx}" --init; then
  log "FAILED: the container did not start with the host-agent's flags"
  exit 1
fi
# Commands run as the host-agent runs them: a login shell.
in_sbx() { docker exec "${sbx}" bash -lc "$1"; }
# expect REGEX COMMAND: the command succeeds and its output matches.
expect() {
  local regex="$1" out
  out="$(in_sbx "$2" 2>&1)" || { printf '%s\n' "${out}"; return 1; }
  printf '%s\n' "${out}"
  printf '%s\n' "${out}" | grep -Eq -- "${regex}" || { echo "expected output matching /${regex}/"; return 1; }
}

echo "== image"
check "label" bash -c "docker image inspect --format '{{ index .Config.Labels \"dev.ephemeral-sandbox.image\" }}' '${image}' | grep -x 1"
check "default user is not root" bash -c "docker image inspect --format '{{.Config.User}}' '${image}' | grep -x 1000:1000"
check "no secrets in image config" bash -c "
  if docker image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' '${image}' | grep -Ei '^(AWS_|[A-Z_]*(SECRET|PASSWORD|TOKEN)[A-Z_]*=)'; then exit 1; fi
  if docker history --no-trunc '${image}' | grep -E 'AKIA[0-9A-Z]{16}|aws_secret_access_key'; then exit 1; fi
  echo 'no AWS_*/secret/token variables, no AWS keys in the build history'"
# As root and with no network: every file of the image is readable, none can leave.
check "no keys or credentials" docker run --rm --user 0 --network none --entrypoint bash "${image}" -c '
  found="$(find / -xdev \( -path /proc -o -path /sys \) -prune -o \( -name "id_rsa*" -o -name "id_dsa*" -o -name "id_ecdsa*" -o -name "id_ed25519*" -o -name "*.ppk" -o -name "ssh_host_*key*" -o -name ".aws" -o -name ".ssh" -o -name ".netrc" -o -name ".git-credentials" -o -name ".pypirc" -o -name ".npmrc" -o -name ".docker" \) -print)"
  keys="$(grep -rIlE "AKIA[0-9A-Z]{16}|BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY" /etc /root /home /opt /data 2>/dev/null)"
  if [ -n "${found}${keys}" ]; then printf "%s\n" ${found} ${keys}; exit 1; fi
  echo "no SSH keys, AWS credentials, netrc or registry tokens"'
check "/data/cold, home owned by agent" bash -c "
  owners=\$(docker run --rm --network none '${image}' stat -c '%U:%G(%u:%g) %n' /data/cold /home/agent) || exit 1
  echo \"\${owners}\" | tr '\n' ' '; echo
  [ \"\$(echo \"\${owners}\" | grep -c '^agent:agent(1000:1000) ')\" = 2 ]"

echo "== runtime hardening"
check "runs as agent" expect '^agent 1000 1000 /home/agent /home/agent$' 'echo "$(id -un) $(id -u) $(id -g) $HOME $PWD"'
check "no capabilities" expect 'CapEff:.0000000000000000' 'grep -E "^(CapEff|CapBnd|NoNewPrivs)" /proc/self/status | tr "\n\t" "  "; grep -q "^NoNewPrivs:.1" /proc/self/status && grep -q "^CapBnd:.0000000000000000" /proc/self/status'
check "read-only root" expect '^writable: /tmp /var/tmp home cold$' '
  for p in /usr/local/bin/x /etc/x /x; do if touch "$p" 2>/dev/null; then echo "could write $p"; exit 1; fi; done
  touch /tmp/x /var/tmp/x ~/x /data/cold/x && rm -f /tmp/x ~/x /data/cold/x && echo "writable: /tmp /var/tmp home cold"'
check "PID 1 is an init" expect '^(docker-init|tini)$' 'cat /proc/1/comm'
# An orphan must be re-parented to PID 1 and reaped when it exits, not left a zombie.
zombie_check='sh -c "sleep 1 & echo \$! > /tmp/orphan.pid"; pid=$(cat /tmp/orphan.pid)
  ppid=$(awk "/^PPid:/ {print \$2}" /proc/$pid/status); [ "$ppid" = 1 ] || { echo "orphan $pid has parent $ppid"; exit 1; }
  sleep 2.5
  if [ -e /proc/$pid ]; then echo "orphan $pid still there: $(grep ^State /proc/$pid/status)"; exit 1; fi
  z=$(for s in /proc/[0-9]*/stat; do awk "\$3 == \"Z\" {print \$1, \$2}" "$s" 2>/dev/null; done)
  [ -z "$z" ] || { echo "zombies: $z"; exit 1; }
  echo "orphan $pid reaped by PID 1 ($(cat /proc/1/comm))"'
check "zombies reaped (--init)" in_sbx "${zombie_check}"
check "login shell, empty home" expect '^PATH=/home/agent/.local/bin:/home/agent/.npm-global/bin:' 'test -f ~/.profile && test -f ~/.bashrc && echo "PATH=$PATH"'
check "locale and timezone" expect '^C.UTF-8 UTC utf-8 UTF-8$' 'echo "$LANG $(date +%Z) $(python3 -c "import locale, sys; print(sys.getfilesystemencoding(), locale.getpreferredencoding())")"'

echo "== tools"
check "python3 >= 3.11" expect '^Python 3\.(1[1-9]|[2-9][0-9])\.' 'python3 --version'
check "python" expect '^Python 3\.' 'python --version'
check "pip" expect '^pip [0-9.]+ from .* \(python 3\.' 'pip --version'
check "venv" expect '^/tmp/smoke-venv$' 'python3 -m venv /tmp/smoke-venv && /tmp/smoke-venv/bin/python -c "import sys; print(sys.prefix)"'
check "node 20 LTS" expect '^v20\.' 'node --version'
check "npm" expect '^[0-9]+\.[0-9]+\.[0-9]+$' 'npm --version'
check "npx" expect '^[0-9]+\.' 'npx --version'
check "bash" expect '^GNU bash, version [5-9]\.' 'bash --version | head -n 1'
check "curl" expect '^curl [0-9]' 'curl --version | head -n 1'
check "wget" expect '^GNU Wget [0-9]' 'wget --version | head -n 1'
check "git" expect '^git version [0-9]' 'git --version'
check "jq" expect '^jq-[0-9]' 'jq --version'
check "ripgrep" expect '^ripgrep [0-9]' 'rg --version | head -n 1'
check "fd" expect '^fd(find)? [0-9]' 'fd --version'
check "htop" expect '^htop [0-9]' 'htop --version | head -n 1'
check "tmux" expect '^tmux [0-9]' 'tmux -V'
check "unzip" expect '^UnZip [0-9]' 'unzip -v | head -n 1'
check "ca-certificates" expect 'certificates$' 'echo "$(grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt) certificates"'
check "gcc / g++ / make" expect '^gcc [0-9].* g\+\+ [0-9].* make [0-9]' 'echo "gcc $(gcc -dumpversion) g++ $(g++ -dumpversion) make $(make --version | head -n 1 | cut -d" " -f3)"'
# Debian's package says "Chromium N", Playwright's headless shell (Ubuntu builds) its own name.
check "chromium" expect ' [0-9]+\.[0-9]+\.[0-9]+\.[0-9]+' 'chromium --version'
check "playwright-core" expect '^playwright-core [0-9]+\.[0-9]+\.[0-9]+$' 'echo "playwright-core $(node -p "require(\"playwright-core/package.json\").version")"'
check "tini" expect '^tini version [0-9]' 'tini --version'

echo "== languages"
check "python one-liner" expect '^\{"sum": 5050, "ok": true\}$' 'python3 -c "import json, sys; print(json.dumps({\"sum\": sum(range(101)), \"ok\": sys.version_info >= (3, 11)}))"'
check "node one-liner" expect '^\{"sum":5050,"major":20\}$' 'node -e "console.log(JSON.stringify({ sum: Array.from({ length: 101 }, (_, i) => i).reduce((a, b) => a + b), major: Number(process.versions.node.split(\".\")[0]) }))"'
# Built in home: Docker mounts --tmpfs /tmp noexec unless told `exec`.
check "C build (build-essential)" expect '^hello from C$' 'printf "#include <stdio.h>\nint main(void) { puts(\"hello from C\"); return 0; }\n" > /tmp/hello.c && gcc -O2 -o ~/hello /tmp/hello.c && ~/hello && rm ~/hello'
check "Python headers" expect 'Python\.h$' 'ls "$(python3 -c "import sysconfig; print(sysconfig.get_paths()[\"include\"])")/Python.h"'
# Node's headers ship in the image (npm_config_nodedir): node-gyp builds with no download.
check "native addon (node-gyp)" expect '^hello from a native addon$' '
  rm -rf ~/addon && mkdir -p ~/addon && cd ~/addon
  echo "{\"targets\": [{\"target_name\": \"hello\", \"sources\": [\"hello.c\"]}]}" > binding.gyp
  echo "{\"name\": \"hello-addon\", \"version\": \"1.0.0\", \"gypfile\": true}" > package.json
  printf "%s\n" "#include <node_api.h>" \
    "static napi_value hello(napi_env env, napi_callback_info info) { napi_value s; napi_create_string_utf8(env, \"hello from a native addon\", NAPI_AUTO_LENGTH, &s); return s; }" \
    "NAPI_MODULE_INIT() { napi_value fn; napi_create_function(env, \"hello\", NAPI_AUTO_LENGTH, hello, NULL, &fn); napi_set_named_property(env, exports, \"hello\", fn); return exports; }" > hello.c
  npm install --offline --no-audit --no-fund --loglevel=error >build.log 2>&1 || { tail -n 20 build.log; exit 1; }
  node -e "console.log(require(\"./build/Release/hello.node\").hello())"; rc=$?; cd ~ && rm -rf ~/addon; exit $rc'
# A wheel built on the spot: pip --user must install it offline and put its script on PATH.
check "pip --user install" expect '^hello from pip$' '
  mkdir -p /tmp/wheel && cd /tmp/wheel && python3 - <<"PY"
import zipfile
files = {
  "smoke_hello.py": "def main():\n    print(\"hello from pip\")\n",
  "smoke_hello-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: smoke-hello\nVersion: 1.0\n",
  "smoke_hello-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: smoke\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
  "smoke_hello-1.0.dist-info/entry_points.txt": "[console_scripts]\nsmoke-hello = smoke_hello:main\n",
}
files["smoke_hello-1.0.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + "smoke_hello-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile("smoke_hello-1.0-py3-none-any.whl", "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
PY
  pip install --user --no-index --quiet /tmp/wheel/smoke_hello-1.0-py3-none-any.whl && cd / && smoke-hello'
check "npm -g install" expect '^hello from npm / required$' '
  mkdir -p /tmp/npkg && cd /tmp/npkg
  printf "{\"name\":\"smoke-hello\",\"version\":\"1.0.0\",\"bin\":{\"smoke-hello-npm\":\"cli.js\"},\"main\":\"cli.js\"}" > package.json
  printf "#!/usr/bin/env node\nif (require.main === module) console.log(\"hello from npm\");\nmodule.exports = \"required\";\n" > cli.js
  npm pack --silent >/dev/null && npm install -g --offline --silent ./smoke-hello-1.0.0.tgz && cd / && echo "$(smoke-hello-npm) / $(node -e "console.log(require(\"smoke-hello\"))")"'

echo "== headless chromium"
docker exec -d "${sbx}" python3 -m http.server 8123 --bind 127.0.0.1 --directory /smoke/www
check "page server up" expect '<title>' 'for i in $(seq 1 50); do curl -fsS http://127.0.0.1:8123/ 2>/dev/null && exit 0; sleep 0.1; done; exit 1'
check "chromium CLI screenshot" expect '^[0-9]+ bytes$' '
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=800,600 \
    --screenshot=/tmp/cli.png http://127.0.0.1:8123/ >/tmp/cli.log 2>&1 || { tail -n 5 /tmp/cli.log; exit 1; }
  echo "$(stat -c %s /tmp/cli.png) bytes"'
check "playwright render" expect '"headline":"Ephemeral Sandbox smoke page"' 'node /smoke/render.cjs http://127.0.0.1:8123/ ~/smoke-page.png'
png="${home_dir}/smoke-page.png"
check "PNG on host is real" bash -c "
  [ -f '${png}' ] || { echo 'no ${png}'; exit 1; }
  sig=\$(od -An -tx1 -N8 '${png}' | tr -d ' \n'); [ \"\${sig}\" = 89504e470d0a1a0a ] || { echo \"not a PNG (\${sig})\"; exit 1; }
  w=\$(od -An -tu1 -j16 -N4 '${png}' | awk '{print \$1*16777216+\$2*65536+\$3*256+\$4}')
  h=\$(od -An -tu1 -j20 -N4 '${png}' | awk '{print \$1*16777216+\$2*65536+\$3*256+\$4}')
  size=\$(stat -c %s '${png}')
  [ \"\${w}x\${h}\" = 1280x720 ] || { echo \"unexpected size \${w}x\${h}\"; exit 1; }
  [ \"\${size}\" -gt 100000 ] || { echo \"PNG is only \${size} bytes: the page did not render\"; exit 1; }
  echo \"\${w}x\${h}, \${size} bytes\""

echo "== sandbox helper"
docker exec -d "${sbx}" python3 /smoke/api-stub.py 8124 "${token}" /tmp/api-requests.jsonl
check "fake API up" expect 'sbx-smoke' 'for i in $(seq 1 50); do out=$(sandbox heartbeat 2>/dev/null) && { echo "$out"; exit 0; }; sleep 0.1; done; exit 1'
check "help" expect 'exit codes' 'sandbox --help'
check "heartbeat sends the token" expect '"key": "tok-smoke-' 'sandbox heartbeat >/dev/null && tail -n 1 /tmp/api-requests.jsonl | grep "\"/sandboxes/sbx-smoke/heartbeat\"" | grep "application/json"'
check "complete --result" expect '\{\\"result\\": \{\\"answer\\": 42\}\}' 'sandbox complete --result "{\"answer\": 42}" >/dev/null && tail -n 1 /tmp/api-requests.jsonl'
check "error MESSAGE" expect '\\"error\\": \\"tests failed\\"' 'sandbox error tests failed >/dev/null && tail -n 1 /tmp/api-requests.jsonl'
check "retries 503 then succeeds" expect '^exit 0 after 3 requests$' 'SANDBOX_ID=flaky SANDBOX_API_BACKOFF_SECONDS=0.05 sandbox heartbeat >/dev/null 2>&1; rc=$?; echo "exit $rc after $(grep -c "/sandboxes/flaky/heartbeat" /tmp/api-requests.jsonl) requests"'
check "4xx: exit 4, API message" expect '^exit 4: .*sandbox is already completed' 'out=$(SANDBOX_ID=rejected sandbox complete 2>&1); echo "exit $?: $out"'
check "5xx: gives up, exit 5" expect '^exit 5 after 3 requests$' 'SANDBOX_ID=down SANDBOX_API_ATTEMPTS=3 SANDBOX_API_BACKOFF_SECONDS=0.05 sandbox heartbeat >/dev/null 2>&1; rc=$?; echo "exit $rc after $(grep -c "/sandboxes/down/heartbeat" /tmp/api-requests.jsonl) requests"'
check "missing env: exit 3" expect '^exit 3$' 'env -u SANDBOX_TOKEN sandbox heartbeat >/dev/null 2>&1; echo "exit $?"'
check "bad --result: exit 2" expect '^exit 2$' 'sandbox complete --result "{oops" >/dev/null 2>&1; echo "exit $?"'

echo "== without --init (the image's own tini)"
sbx2="sbx-smoke-noinit-${suffix}"
if run_sandbox "${sbx2}"; then
  check "PID 1 is tini" bash -c "docker exec '${sbx2}' cat /proc/1/comm | tee /dev/stderr | grep -x tini"
  check "zombies reaped (tini)" docker exec "${sbx2}" bash -lc "${zombie_check}"
else
  failed=$((failed + 1)); failures+=("start without --init")
fi

size_bytes="$(docker image inspect --format '{{.Size}}' "${image}")"
echo "== summary"
log "image ${image}: $((size_bytes / 1000000)) MB"
log "${passed} passed, ${failed} failed in $(( $(date +%s) - started_all )) s"
if [ "${failed}" -gt 0 ]; then
  log "FAILED: ${failures[*]}"
  exit 1
fi
log "all checks passed"
