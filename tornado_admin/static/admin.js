// The tornado-admin dashboard: the admin API (docs/manual-job-trigger.md) and /api/status, polled.
// The token lives in sessionStorage (this tab only) and travels only in the Authorization header.
// Text goes in with textContent, never innerHTML: job errors quote what ESI and databases said.
"use strict";

(() => {
  const TOKEN_KEY = "tornado-admin.token";
  const POLL_RUNNING_MS = 500; // while a run goes: the progress bar should move
  const POLL_IDLE_MS = 3000;
  const HISTORY_LIMIT = 10;
  const TOKEN_SHAPE = /^[\x21-\x7e]+$/; // what the server accepts in ADMIN_TOKEN

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let signedIn = false;
  let triggered = null; // the run the last trigger answer named: its message goes once it ends

  class Unreachable extends Error {}

  const storedToken = () => sessionStorage.getItem(TOKEN_KEY);

  async function api(path, { method = "GET", auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (auth) headers.Authorization = "Bearer " + storedToken();
    let response;
    try {
      response = await fetch(path, { method, headers, cache: "no-store", redirect: "error" });
    } catch (error) {
      throw new Unreachable(String(error));
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null; // a proxy's HTML page, say: the status still says what happened
    }
    return { status: response.status, body, headers: response.headers };
  }

  // -- formatting

  function formatMs(ms) {
    if (ms < 1000) return `${ms} ms`;
    const seconds = ms / 1000;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    return formatSeconds(Math.round(seconds));
  }

  // "45 s", "30 min", "2 min 05 s", "1 h 02 min", "3 d 4 h": the two largest units, zeros left out.
  function formatSeconds(total) {
    const pair = (big, bigUnit, small, smallUnit, pad) =>
      small ? `${big} ${bigUnit} ${String(small).padStart(pad, "0")} ${smallUnit}` : `${big} ${bigUnit}`;
    if (total < 60) return `${total} s`;
    const minutes = Math.floor(total / 60);
    if (minutes < 60) return pair(minutes, "min", total % 60, "s", 2);
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return pair(hours, "h", minutes % 60, "min", 2);
    return pair(Math.floor(hours / 24), "d", hours % 24, "h", 1);
  }

  const formatCount = (n) => Number(n).toLocaleString("en-US");
  const formatTime = (iso) => new Date(iso).toLocaleString();

  // -- messages

  function showNotice(text, kind = "error") {
    const notice = $("notice");
    notice.textContent = text;
    notice.className = `notice ${kind}`;
    notice.hidden = false;
  }

  function clearNotice() {
    $("notice").hidden = true;
  }

  function showTriggerResult(text, kind) {
    const result = $("trigger-result");
    result.textContent = text;
    result.className = `trigger-result ${kind}`;
    result.hidden = false;
  }

  function unreachableMessage() {
    return `Cannot reach the server at ${location.origin}: it may be down or restarting. ` +
      `Retrying every ${POLL_IDLE_MS / 1000} s.`;
  }

  // An answer other than success: say what it means. Returns false when polling should stop.
  function handleRefusal(answer) {
    const message = answer.body && answer.body.message ? answer.body.message : "";
    switch (answer.status) {
      case 401:
        signOut(`The server refused the token (401 Unauthorized: ${message || "no reason given"}). ` +
          "Enter the admin token again.");
        return false;
      case 429: {
        const wait = answer.headers.get("Retry-After") || "60";
        showNotice(`Too many failed sign-ins from this address (429). Retry in ${wait} s.`);
        return true;
      }
      case 500:
        showNotice(answer.body && answer.body.error === "Server misconfiguration"
          ? "The server has no ADMIN_TOKEN configured (500 Server misconfiguration): admin actions are off."
          : "The server failed to answer (500 Internal Server Error); see its log.");
        return true;
      case 503:
        // The server says why: its job store is down, or it is shutting down.
        showNotice(`Service unavailable (503): ${message || "retry later"}. Retrying.`);
        return true;
      default:
        showNotice(`Unexpected answer from the server: ${answer.status} ${message}`.trim());
        return true;
    }
  }

  // -- rendering

  function renderFreshness(answer) {
    const text = $("freshness-text");
    const banner = $("stale-banner");
    if (answer.status !== 200 || !answer.body) {
      text.textContent = `Freshness unknown (the server answered ${answer.status}).`;
      banner.hidden = true;
      return;
    }
    const status = answer.body;
    const interval = formatSeconds(status.fetchIntervalSeconds);
    if (status.lastSuccessAt === null) {
      text.textContent = `No successful run yet. Runs are scheduled every ${interval}.`;
      banner.textContent = "No market data yet: no run has completed.";
    } else {
      text.textContent = `Last successful run ${formatTime(status.lastSuccessAt)}, ` +
        `${formatSeconds(status.dataAgeSeconds)} ago. Runs are scheduled every ${interval}.`;
      banner.textContent = `Data may be stale: the last successful run was ${formatSeconds(status.dataAgeSeconds)} ` +
        `ago, more than twice the fetch interval (${interval}).`;
    }
    text.className = status.stale ? "stale" : "fresh";
    banner.hidden = !status.stale;
  }

  function renderCurrent(job) {
    $("current-idle").hidden = Boolean(job);
    $("current-run").hidden = !job;
    if (!job) return;
    const running = job.status === "running";
    $("current-title").textContent = running ? "Current run" : "Last run";
    const badge = $("run-status");
    badge.textContent = job.status;
    badge.className = `badge ${job.status}`;
    $("run-id").textContent = job.jobId;
    $("run-trigger").textContent = `${job.trigger} trigger, started ${formatTime(job.startedAt)}`;

    const bar = $("run-progress");
    bar.className = job.status;
    const progress = job.progress;
    const parts = [];
    if (progress && progress.regionsTotal > 0) {
      bar.max = progress.regionsTotal;
      bar.value = progress.regionsDone;
      parts.push(`${progress.regionsDone} of ${progress.regionsTotal} regions`);
      parts.push(`${formatCount(progress.ordersStored)} orders stored`);
    } else if (running) {
      bar.removeAttribute("value"); // indeterminate until the region list is known
      parts.push("listing regions");
    } else {
      bar.max = 1;
      bar.value = job.status === "completed" ? 1 : 0;
    }
    parts.push(running ? `${formatMs(job.duration)} elapsed` : `took ${formatMs(job.duration)}`);
    $("run-progress-text").textContent = parts.join(" · ");
    const error = $("run-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `Error: ${job.error}` : "";
  }

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function renderHistory(jobs) {
    const rows = jobs.map((job) => {
      const tr = document.createElement("tr");
      const orders = job.result ? job.result.totalOrders : job.progress ? job.progress.ordersStored : null;
      let error = job.error || "";
      if (!error && job.result && job.result.errorCount > 0) {
        error = `${job.result.errorCount} region(s) failed`;
      }
      const status = cell("", "");
      const badge = document.createElement("span");
      badge.className = `badge ${job.status}`;
      badge.textContent = job.status;
      status.append(badge);
      tr.append(
        cell(formatTime(job.startedAt)), status, cell(job.trigger),
        cell(formatMs(job.duration), "number"),
        cell(orders === null || orders === undefined ? "" : formatCount(orders), "number"),
        cell(error, "error-text"),
      );
      tr.dataset.jobId = job.jobId;
      return tr;
    });
    $("runs").replaceChildren(...rows);
    $("runs-empty").hidden = jobs.length > 0;
  }

  // -- the polling loop

  function schedule(ms) {
    clearTimeout(timer);
    timer = signedIn ? setTimeout(refresh, ms) : null;
  }

  async function refresh() {
    let running = false;
    try {
      const [jobs, status] = await Promise.all([
        api(`/api/admin/jobs?limit=${HISTORY_LIMIT}`),
        api("/api/status", { auth: false }),
      ]);
      renderFreshness(status);
      if (jobs.status === 200) {
        clearNotice();
        renderCurrent(jobs.body.jobs[0]);
        renderHistory(jobs.body.jobs);
        const named = jobs.body.jobs.find((job) => job.jobId === triggered);
        if (named && named.status !== "running") $("trigger-result").hidden = true;
        running = jobs.body.jobs.some((job) => job.status === "running");
      } else if (!handleRefusal(jobs)) {
        return;
      }
    } catch (error) {
      if (!(error instanceof Unreachable)) throw error;
      showNotice(unreachableMessage());
    }
    schedule(running ? POLL_RUNNING_MS : POLL_IDLE_MS);
  }

  async function trigger() {
    const button = $("trigger");
    button.disabled = true;
    try {
      const answer = await api("/api/admin/trigger-fetch", { method: "POST" });
      triggered = answer.body ? answer.body.jobId : null;
      if (answer.status === 202) {
        showTriggerResult(`202 Accepted: run ${answer.body.jobId} started.`, "accepted");
      } else if (answer.status === 409) {
        showTriggerResult(`409 Conflict: run ${answer.body.jobId} is already in progress.`, "conflict");
      } else {
        $("trigger-result").hidden = true;
        if (!handleRefusal(answer)) return;
      }
    } catch (error) {
      if (!(error instanceof Unreachable)) throw error;
      showNotice(unreachableMessage());
      return;
    } finally {
      button.disabled = false;
    }
    refresh();
  }

  // -- signing in and out

  function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim().replace(/^Bearer\s+/i, "");
    input.value = "";
    if (!TOKEN_SHAPE.test(token)) {
      showNotice("A token is printable ASCII without spaces: paste the value of ADMIN_TOKEN.");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    clearNotice();
    showDashboard();
  }

  function signOut(message) {
    signedIn = false;
    clearTimeout(timer);
    sessionStorage.removeItem(TOKEN_KEY);
    $("dashboard").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("token").focus();
    if (message) showNotice(message);
    else clearNotice();
  }

  function showDashboard() {
    signedIn = true;
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("forget").hidden = false;
    $("trigger-result").hidden = true;
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("trigger").addEventListener("click", trigger);
    $("forget").addEventListener("click", () => signOut());
    if (storedToken()) showDashboard();
    else signOut();
  });
})();
