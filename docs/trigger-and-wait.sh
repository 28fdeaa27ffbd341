#!/usr/bin/env bash
# Trigger a fetch-market-data run and wait until it ends. See docs/manual-job-trigger.md.
#
#   ADMIN_TOKEN=...  docs/trigger-and-wait.sh
#
# Environment:
#   ADMIN_TOKEN      required; one of the server's admin tokens (never printed)
#   BASE_URL         default http://localhost:3000
#   POLL_SECONDS     seconds between status checks, default 5
#   TIMEOUT_SECONDS  give up waiting after this long, default 900
#
# If a run is already in progress (409), the script follows that run instead.
# Exit status: 0 the run completed, 1 the run failed, 2 anything else (bad setup, refused
# credentials, server unreachable, unexpected answer, timeout).
# Progress goes to stderr; the summary goes to stdout. Needs curl, and jq or python3.
set -euo pipefail

BASE_URL="${BASE_URL:-http://localhost:3000}"
BASE_URL="${BASE_URL%/}"
POLL_SECONDS="${POLL_SECONDS:-5}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-900}"

say() { printf '%s\n' "$*" >&2; }
die() { say "trigger-and-wait: $*"; exit 2; }

[[ -n "${ADMIN_TOKEN:-}" ]] || die "ADMIN_TOKEN is not set"
[[ "$POLL_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "POLL_SECONDS must be a positive integer"
[[ "$TIMEOUT_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "TIMEOUT_SECONDS must be a positive integer"
command -v curl >/dev/null || die "curl is required"
if command -v jq >/dev/null; then
  JSON_TOOL=jq
elif command -v python3 >/dev/null; then
  JSON_TOOL=python3
else
  die "jq or python3 is required"
fi

BODY_FILE="$(mktemp)"
HEADER_FILE="$(mktemp)"
trap 'rm -f "$BODY_FILE" "$HEADER_FILE"' EXIT

# field PATH: one value of the last response body, by a dotted path (e.g. result.regions.fetched).
# Prints nothing when the field is absent; objects and arrays come out as JSON.
field() {
  if [[ "$JSON_TOOL" == jq ]]; then
    jq -r --arg p "$1" \
      'getpath($p | split(".")) | if . == null then empty elif type == "object" or type == "array" then tojson else tostring end' \
      "$BODY_FILE" 2>/dev/null || true
  else
    python3 - "$1" "$BODY_FILE" <<'PY' 2>/dev/null || true
import json, sys
value = json.load(open(sys.argv[2]))
for key in sys.argv[1].split("."):
    value = value.get(key) if isinstance(value, dict) else None
if value is not None:
    print(json.dumps(value) if isinstance(value, (dict, list)) else
          str(value).lower() if isinstance(value, bool) else value)
PY
  fi
}

# failed_regions: "  <regionId>: <error>" for each failed region of the last response body.
failed_regions() {
  if [[ "$JSON_TOOL" == jq ]]; then
    jq -r '.result.regions.failed[]? | "  \(.regionId): \(.error)"' "$BODY_FILE"
  else
    python3 - "$BODY_FILE" <<'PY'
import json, sys
for region in json.load(open(sys.argv[1])).get("result", {}).get("regions", {}).get("failed", []):
    print(f"  {region['regionId']}: {region['error']}")
PY
  fi
}

# api METHOD PATH: sets STATUS (000 when the server could not be reached); body in BODY_FILE.
# The token goes to curl on stdin, so it shows up neither in `ps` nor in a trace.
api() {
  STATUS="$(printf 'Authorization: Bearer %s\n' "$ADMIN_TOKEN" |
    curl -sS -X "$1" -H @- --max-time 30 -o "$BODY_FILE" -D "$HEADER_FILE" \
      -w '%{http_code}' "$BASE_URL$2" 2>/dev/null)" || STATUS=000
}

retry_after() {  # seconds the last 503 asked us to wait, else POLL_SECONDS
  local value
  value="$(tr -d '\r' <"$HEADER_FILE" | sed -n 's/^[Rr]etry-[Aa]fter: *\([0-9][0-9]*\)$/\1/p')"
  printf '%s\n' "${value:-$POLL_SECONDS}"
}

refused() {  # a final answer other than 2xx/409/503: say what the server said
  local message
  message="$(field message)"
  die "HTTP $STATUS from $1: $(field error)${message:+: $message}"
}

deadline=$((SECONDS + TIMEOUT_SECONDS))

# 1. Trigger (a 503 means the job store is briefly unavailable: retry).
while :; do
  api POST /api/admin/trigger-fetch
  case "$STATUS" in
    202)
      JOB_ID="$(field jobId)"
      say "Triggered job $JOB_ID"
      break ;;
    409)
      JOB_ID="$(field jobId)"
      say "A run is already in progress: following job $JOB_ID"
      break ;;
    503)
      ((SECONDS < deadline)) || die "job store still unavailable after ${TIMEOUT_SECONDS}s"
      wait_s="$(retry_after)"
      say "Job store unavailable (503); retrying in ${wait_s}s"
      sleep "$wait_s" ;;
    000) die "cannot reach $BASE_URL" ;;
    *) refused "POST /api/admin/trigger-fetch" ;;
  esac
done
[[ "$JOB_ID" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "unexpected job id in the answer: '$JOB_ID'"

# 2. Poll until the job is no longer running (503 and connection errors: keep trying).
while :; do
  api GET "/api/admin/job-status/$JOB_ID"
  case "$STATUS" in
    200)
      status="$(field status)"
      case "$status" in
        running)
          if [[ -n "$(field progress)" ]]; then
            say "running: $(field progress.regionsDone)/$(field progress.regionsTotal) regions done," \
              "$(field progress.ordersStored) orders written, $(field duration) ms so far"
          else
            say "running: starting, $(field duration) ms so far"
          fi
          wait_s="$POLL_SECONDS" ;;
        completed | failed) break ;;
        *) die "unexpected job status '$status'" ;;
      esac ;;
    503) wait_s="$(retry_after)"; say "job store unavailable (503); retrying in ${wait_s}s" ;;
    000) wait_s="$POLL_SECONDS"; say "cannot reach $BASE_URL; retrying in ${wait_s}s" ;;
    404) die "job $JOB_ID not found (expired, or the server restarted with JOB_STORE_URL=memory://)" ;;
    *) refused "GET /api/admin/job-status/$JOB_ID" ;;
  esac
  if ((SECONDS + wait_s > deadline)); then
    die "timed out after ${TIMEOUT_SECONDS}s; job $JOB_ID may still be running: $BASE_URL/api/admin/job-status/$JOB_ID"
  fi
  sleep "$wait_s"
done

# 3. Summary.
if [[ "$status" == failed ]]; then
  echo "Job $JOB_ID failed after $(field duration) ms (trigger: $(field trigger)): $(field error)"
  exit 1
fi
echo "Job $JOB_ID completed in $(field result.duration) ms (trigger: $(field trigger))"
echo "Regions: $(field result.successCount) stored ($(field result.regions.fetched) fetched," \
  "$(field result.regions.notModified) unchanged), $(field result.errorCount) failed"
echo "Orders: $(field result.totalOrders) held, $(field result.ordersWritten) written by this run"
if [[ "$(field result.errorCount)" != 0 ]]; then
  echo "Failed regions:"
  failed_regions
fi
exit 0
