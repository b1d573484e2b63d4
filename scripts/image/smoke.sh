#!/usr/bin/env bash
# Runs the built images the way a restricted Pod would (read-only root, numeric non-root user, no
# capabilities, only /tmp writable) on this machine's loopback, and checks what a user sees:
#
#   1. `ddnn eval` of the shipped bundle inside the image gives the same table as on the host,
#      also with nothing writable at all;
#   2. a broker (the eclipse-mosquitto:2 stand-in with the operator's generated mosquitto.conf,
#      or with BROKER=host Debian's mosquitto), `ddnn server` and `ddnn agent` started with the
#      arguments and environment the operator gives its Pods answer POST /v1/infer (raw pixels
#      and a PNG), some answers coming from the server tier, with the exit stages and labels of
#      `ddnn eval` for the same images;
#   3. the same agent with onnxruntime-node's binaries hidden (as on linux/arm/v7) falls back to
#      the WebAssembly backend and gives the same answers;
#   4. nothing was written anywhere but /tmp, and nothing in /tmp either;
#   5. `ddnn codegen c` in the image writes the same device program as on the host.
#
#   bash scripts/image/smoke.sh [IMAGE]     (default ddnn-fog:<package.json version>)
#
# Environment: PODMAN, PODMAN_RUNTIME (as build.sh), BROKER (image or host), SAMPLES (default 40).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
read -ra podman <<<"${PODMAN:-podman}"
version=$(node -p 'require("./package.json").version')
image=${1:-ddnn-fog:$version}
broker_kind=${BROKER:-image}
samples=${SAMPLES:-40}
run_opts=(--runtime "${PODMAN_RUNTIME:-runc}" --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
# What the operator's Pods get (operator/builders.ts): read-only root, no privilege escalation, no
# capabilities, an emptyDir at /tmp; plus a numeric non-root user and the host's loopback only.
pod_opts=("${run_opts[@]}" --read-only --read-only-tmpfs=false --tmpfs "/tmp:rw,size=64m,mode=1777"
  --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges --network host)

work=$(mktemp -d)
prefix="ddnn-smoke-$$"
containers=()
mosquitto_pid=
cleanup() {
  for c in "${containers[@]}"; do "${podman[@]}" rm -f -t 2 "$c" >/dev/null 2>&1 || true; done
  [ -z "$mosquitto_pid" ] || kill "$mosquitto_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "smoke.sh: FAIL: $*" >&2
  for c in "${containers[@]}"; do
    echo "--- logs of $c" >&2
    "${podman[@]}" logs --tail 30 "$c" 2>&1 | grep -v 'CNI config' >&2 || true
  done
  exit 1
}
say() { echo "smoke.sh: $*"; }
free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
wait_ready() { # URL CONTAINER
  for _ in $(seq 1 120); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    if [ "$("${podman[@]}" inspect -f '{{.State.Running}}' "$2" 2>/dev/null)" != true ]; then
      fail "$2 exited before $1 answered"
    fi
    sleep 0.5
  done
  fail "$1 did not answer within 60 s"
}
start() { # NAME ARGS...: a detached container, removed by cleanup
  local name="$prefix-$1"
  shift
  containers+=("$name")
  "${podman[@]}" run -d --name "$name" "$@" >/dev/null 2>"$work/$name.err" || {
    cat "$work/$name.err" >&2
    fail "cannot start $name"
  }
}
# Every path the container wrote to outside its declared volumes; none is allowed.
check_writes() { # CONTAINER
  local changed in_tmp
  # podman itself puts /etc/hosts, /etc/resolv.conf, /etc/hostname and /run/.containerenv in.
  changed=$("${podman[@]}" diff "$1" 2>/dev/null |
    grep -vE '^[AC] (/tmp|/etc|/etc/(hosts|resolv\.conf|hostname)|/run|/run/\.containerenv)$' || true)
  in_tmp=$("${podman[@]}" exec "$1" find /tmp -mindepth 1 2>/dev/null | head -5 || true)
  [ -z "$changed" ] || fail "$1 changed its root filesystem: $changed"
  [ -z "$in_tmp" ] || fail "$1 wrote under /tmp: $in_tmp"
}

bundle=models/fashion-deep
images=models/eval/fashion-mnist-t10k-2000-images-idx3-ubyte.gz
labels=models/eval/fashion-mnist-t10k-2000-labels-idx1-ubyte.gz

# 1. eval, inside and on the host (the host's build must be current: npm run build).
"${podman[@]}" image exists "$image" || fail "no image $image (bash scripts/image/build.sh)"
inside=$("${podman[@]}" run --rm "${run_opts[@]}" --read-only --read-only-tmpfs=false --user 65532:65532 \
  --cap-drop ALL --network none "$image" eval --bundle "$bundle" --images "$images" --labels "$labels" --json 2>"$work/eval.err") ||
  fail "eval in the image: $(cat "$work/eval.err")"
grep -v 'CNI config' "$work/eval.err" | grep . && fail "eval in the image wrote to stderr"
host=$(node dist/cli/main.js eval --bundle "$bundle" --images "$images" --labels "$labels" --json)
[ "$inside" = "$host" ] || fail "eval differs: image $inside, host $host"
say "eval in the image, nothing writable: $(node -p "const r=JSON.parse(process.argv[1]); 'Overall '+(r.overall*100).toFixed(2)+'%, device exit rate '+(r.stages[0].exitRate*100).toFixed(2)+'%, same as the host'" "$inside")"
# 1b. ddnn codegen c in the image finds its C runtime sources and writes the same device program
# as on the host (generation is deterministic), into the only writable place.
mkdir -p "$work/gen-image" && chmod 777 "$work/gen-image"
"${podman[@]}" run --rm "${run_opts[@]}" --read-only --read-only-tmpfs=false --user 65532:65532 \
  --cap-drop ALL --network none -v "$work/gen-image:/out" "$image" codegen c --bundle "$bundle" \
  --out /out >"$work/codegen.out" 2>&1 || fail "codegen in the image: $(cat "$work/codegen.out")"
node dist/cli/main.js codegen c --bundle "$bundle" --out "$work/gen-host" >/dev/null
diff -r "$work/gen-image" "$work/gen-host" >/dev/null || fail "codegen in the image wrote other files than on the host"
say "codegen c in the image: $(find "$work/gen-image" -type f | wc -l) files, the same bytes as on the host"
node dist/cli/main.js eval --bundle "$bundle" --images "$images" --labels "$labels" --limit "$samples" \
  --predictions "$work/predictions.json" >/dev/null

# The request bodies: raw u8 pixels of the first samples, and the first one again as a PNG.
node --input-type=module - "$images" "$samples" "$work" <<'EOF'
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { gunzipSync } from "node:zlib";
const [file, n, dir] = process.argv.slice(2);
const idx = gunzipSync(readFileSync(file));
for (let i = 0; i < Number(n); i++) writeFileSync(`${dir}/${i}.raw`, idx.subarray(16 + i * 784, 16 + (i + 1) * 784));
const { PNG } = createRequire(`${process.cwd()}/package.json`)("pngjs");
const png = new PNG({ width: 28, height: 28, colorType: 0, inputColorType: 0, inputHasAlpha: false });
const px = idx.subarray(16, 16 + 784);
for (let i = 0; i < 784; i++) png.data.set([px[i], px[i], px[i], 255], i * 4);
writeFileSync(`${dir}/0.png`, PNG.sync.write(png, { colorType: 0 }));
EOF

# 2. Broker, server, agent. Listeners on 127.0.0.1 only.
mqtt_port=$(free_port)
conf_dir="$work/mosquitto"
mkdir -p "$conf_dir"
# The operator's generated configuration, with its listener moved onto a free loopback port.
node --input-type=module -e "import('$root/dist/operator/builders.js').then((m) => process.stdout.write(m.MOSQUITTO_CONF))" |
  sed "s/^listener .*/listener $mqtt_port 127.0.0.1/" >"$conf_dir/mosquitto.conf"
chmod 755 "$conf_dir" && chmod 644 "$conf_dir/mosquitto.conf"
if [ "$broker_kind" = host ]; then
  mosquitto -c "$conf_dir/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  mosquitto_pid=$!
  say "broker: Debian's mosquitto on 127.0.0.1:$mqtt_port (pid $mosquitto_pid)"
else
  "${podman[@]}" image exists eclipse-mosquitto:2 || fail "no image eclipse-mosquitto:2 (bash scripts/image/build.sh broker)"
  # As buildBrokerDeployment runs it: user 1883, read-only root, the config mounted read-only.
  start broker "${run_opts[@]}" --read-only --read-only-tmpfs=false --user 1883:1883 --cap-drop ALL \
    --security-opt no-new-privileges --network host -v "$conf_dir:/mosquitto/config:ro" \
    eclipse-mosquitto:2 mosquitto -c /mosquitto/config/mosquitto.conf
  say "broker: eclipse-mosquitto:2 stand-in on 127.0.0.1:$mqtt_port, the operator's mosquitto.conf"
fi
for _ in $(seq 1 40); do (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break; sleep 0.25; done
(exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null || fail "the broker does not listen on 127.0.0.1:$mqtt_port"

server_port=$(free_port)
tier_env=(-e DDNN_MODEL=smoke/fashion -e "DDNN_BUNDLE=/app/$bundle" -e "DDNN_BROKER_URL=mqtt://127.0.0.1:$mqtt_port"
  -e DDNN_HTTP_HOST=127.0.0.1)
start server "${pod_opts[@]}" "${tier_env[@]}" -e DDNN_STAGES=server -e "DDNN_HTTP_PORT=$server_port" \
  -e DDNN_WORKERS=1 -e DDNN_MAX_BATCH=32 -e DDNN_MAX_DELAY_MS=2 "$image" server
wait_ready "http://127.0.0.1:$server_port/readyz" "$prefix-server"
say "server: ready on 127.0.0.1:$server_port"

ask() { # PORT FILE TYPE: the agent's JSON answer
  curl -fsS --max-time 10 -H "content-type: $3" --data-binary "@$2" "http://127.0.0.1:$1/v1/infer"
}
run_agent() { # NAME EXTRA-OPTIONS...: starts an agent, asks it every sample, writes NAME.answers
  local name=$1 port
  shift
  port=$(free_port)
  start "$name" "${pod_opts[@]}" "${tier_env[@]}" -e DDNN_STAGES=device -e "DDNN_HTTP_PORT=$port" \
    -e DDNN_DEVICE_ID="$name" -e DDNN_SOURCE=http -e DDNN_DEADLINE_MS=2000 "$@" "$image" agent
  wait_ready "http://127.0.0.1:$port/readyz" "$prefix-$name"
  : >"$work/$name.answers"
  for i in $(seq 0 $((samples - 1))); do
    ask "$port" "$work/$i.raw" application/octet-stream >>"$work/$name.answers" || fail "$name: no answer for sample $i"
    echo >>"$work/$name.answers"
  done
  ask "$port" "$work/0.png" image/png >"$work/$name.png.answer" || fail "$name: no answer for the PNG"
}
# Compares an agent's answers with eval's predictions; prints a summary, fails on a difference.
compare() { # NAME
  node --input-type=module - "$work/predictions.json" "$work/$1.answers" "$work/$1.png.answer" "$1" <<'EOF'
import { readFileSync } from "node:fs";
const [predFile, answersFile, pngFile, name] = process.argv.slice(2);
const pred = JSON.parse(readFileSync(predFile, "utf8"));
const answers = readFileSync(answersFile, "utf8").trim().split("\n").map((l) => JSON.parse(l));
const stages = ["device", "server"];
const tiers = {};
let stageSame = 0, labelSame = 0, degraded = 0;
answers.forEach((a, i) => {
  tiers[a.tier] = (tiers[a.tier] ?? 0) + 1;
  if (a.degraded) degraded++;
  if (a.stage === stages[pred.exitStage[i]]) stageSame++;
  if (a.label === pred.label[i]) labelSame++;
});
const png = JSON.parse(readFileSync(pngFile, "utf8"));
const n = answers.length;
console.log(`${name}: ${n} answers, by tier ${JSON.stringify(tiers)}, degraded ${degraded}; exit stage as eval ${stageSame}/${n}, label as eval ${labelSame}/${n}; PNG of sample 0: ${png.labelName} (${png.tier}), raw: ${answers[0].labelName} (${answers[0].tier})`);
const ok = degraded === 0 && stageSame === n && labelSame >= n - 1 && (tiers.server ?? 0) > 0 && (tiers.device ?? 0) > 0 &&
  png.label === answers[0].label;
process.exit(ok ? 0 : 1);
EOF
}

# The onnxruntime build a tier reports in its "ready" line.
backend() { "${podman[@]}" logs "$prefix-$1" 2>&1 | sed -n 's/.*"backend":"\([a-z]*\)".*ready.*/\1/p' | head -1; }

# An image built for linux/arm/v7 has no onnxruntime-node binary: its tiers run on wasm.
natives=$("${podman[@]}" run --rm "${run_opts[@]}" --network none --entrypoint sh "$image" -c \
  'ls /app/node_modules/onnxruntime-node/bin/napi-v6/*/*/onnxruntime_binding.node 2>/dev/null | wc -l' 2>/dev/null)
expected=native
[ "$natives" -gt 0 ] || expected=wasm
run_agent agent
compare agent || fail "the agent's answers differ from eval"
[ "$(backend agent)" = "$expected" ] || fail "the agent runs on backend \"$(backend agent)\", not $expected"
[ "$(backend server)" = "$expected" ] || fail "the server runs on backend \"$(backend server)\", not $expected"
say "server and agent run on the $expected backend"

# 3. linux/arm/v7 behaviour: no onnxruntime-node binary for the platform.
if [ "$expected" = native ]; then
  run_agent agent-wasm --mount type=tmpfs,destination=/app/node_modules/onnxruntime-node/bin,ro=true,notmpcopyup
  compare agent-wasm || fail "the WebAssembly agent's answers differ from eval"
  [ "$(backend agent-wasm)" = wasm ] || fail "without onnxruntime-node binaries the agent runs on \"$(backend agent-wasm)\", not wasm"
  say "with onnxruntime-node's binaries hidden (as on linux/arm/v7) the agent falls back to wasm"
fi

offloads=$(curl -fsS "http://127.0.0.1:$server_port/metrics" | grep -E '^ddnn_requests_total' | awk '{ s += $2 } END { print s + 0 }')
[ "$offloads" -gt 0 ] || fail "the server's /metrics counts no requests"
say "server /metrics: ddnn_requests_total $offloads"

# 4. Writes.
for c in server agent agent-wasm; do
  "${podman[@]}" container exists "$prefix-$c" && check_writes "$prefix-$c"
done
[ "$broker_kind" = host ] || check_writes "$prefix-broker"
say "no container wrote to its root filesystem or to /tmp"
say "PASS ($image)"
