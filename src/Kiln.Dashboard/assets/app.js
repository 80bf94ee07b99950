// Kiln's dashboard script: the live parts of the pages (queue, farm, a build's log) and the buttons that change
// something, all through the HTTP API with the browser's session. Everything from the server is put into the page as
// text (textContent), never as markup.
"use strict";
(() => {
  const api = "/api/v1";
  const ui = "/ui";
  const csrf = document.querySelector('meta[name="kiln-csrf"]')?.content ?? "";

  // A call to the API; a change carries the session's CSRF token. An ended session goes back to the login page.
  async function call(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers ?? {}) };
    if (options.method && options.method !== "GET") headers["X-Kiln-Csrf"] = csrf;
    const response = await fetch(api + path, { credentials: "same-origin", ...options, headers });
    if (response.status === 401) { location.href = ui + "/login"; throw new Error("logged out"); }
    const type = response.headers.get("Content-Type") ?? "";
    const body = type.includes("json") ? await response.json() : null;
    if (!response.ok) throw new Error(body?.detail ?? `the server answered ${response.status}`);
    return body;
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value !== undefined && value !== null) node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
    return node;
  }

  const drvName = path => {
    let name = path.slice(path.lastIndexOf("/") + 1);
    if (name.length > 33 && name[32] === "-") name = name.slice(33);
    return name.endsWith(".drv") ? name.slice(0, -4) : name;
  };
  const badge = status => el("span", { class: `badge badge-${status}` }, status);
  const buildLink = (id, derivation) => el("a", { href: `${ui}/builds/${id}` }, drvName(derivation));
  const duration = seconds => seconds < 60 ? `${seconds} s` : seconds < 3600 ? `${Math.floor(seconds / 60)} min ${seconds % 60} s`
    : `${Math.floor(seconds / 3600)} h ${Math.floor(seconds % 3600 / 60)} min`;

  function fill(tableId, rows) {
    const table = document.getElementById(tableId);
    table.tBodies[0].replaceChildren(...rows);
    const empty = document.querySelector(`[data-empty-for="${tableId}"]`);
    if (empty) empty.hidden = rows.length > 0;
  }

  // Refreshes every two seconds while the page is shown; a failed refresh says so and tries again.
  function every(refresh, status) {
    const run = async () => {
      try { await refresh(); } catch (e) { if (status) status.textContent = `Could not refresh: ${e.message}`; }
      setTimeout(run, document.hidden ? 10000 : 2000);
    };
    run();
  }

  // A build waiting for the account's limit has no record, so no page with a Cancel button: its row has one, which
  // cancels by derivation.
  function cancelWaiting(derivation) {
    const button = el("button", { type: "button", class: "danger", "data-cancel-derivation": derivation }, "Cancel");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await call(`/queue/cancel?derivation=${encodeURIComponent(derivation)}`, { method: "POST" }); button.replaceWith("cancelled"); }
      catch (error) { alert(error.message); button.disabled = false; }
    });
    return button;
  }

  function liveQueue() {
    const summary = document.getElementById("queue-summary");
    const canCancel = document.querySelector('[data-live="queue"]').dataset.canCancel === "1";
    every(async () => {
      const [queue, recent] = await Promise.all([call("/queue"), call("/builds?limit=10")]);
      fill("queue-table", queue.builds.map(b => el("tr", {},
        // A build waiting for the account's limit on Kiln's front doors has no record (no page) yet.
        el("td", {}, b.id === null ? drvName(b.derivation) : buildLink(b.id, b.derivation),
          ...(b.id === null && canCancel ? [" ", cancelWaiting(b.derivation)] : [])), el("td", {}, badge(b.state)),
        el("td", {}, b.position ?? "—"), el("td", {}, b.agent ?? "—"))));
      const running = queue.builds.filter(b => b.state === "running").length;
      summary.textContent = `${running} of your builds running, ${queue.builds.length - running} waiting or preparing; ${queue.waiting} in line (all accounts).`;
      fill("recent-table", recent.builds.map(b => el("tr", {},
        el("td", {}, buildLink(b.id, b.derivation)), el("td", {}, badge(b.status)),
        el("td", {}, el("time", { datetime: b.started }, b.started.replace("T", " ").replace("Z", ""))),
        el("td", {}, b.status === "running" ? "…" : duration(b.seconds)), el("td", {}, b.relation))));
    }, summary);
  }

  function liveFarm() {
    const cards = document.getElementById("farm-cards");
    const card = (label, value, extra) => el("div", { class: "card stat" }, el("span", { class: "label" }, label), el("span", { class: "value" }, value),
      ...(extra ? [el("span", { class: "label" }, extra)] : []));
    every(async () => {
      const farm = await call("/farm");
      cards.replaceChildren(
        card("Agents", farm.agents.length),
        card("Slots busy", `${farm.busySlots} / ${farm.slots}`),
        card("Running", farm.running),
        card("Waiting", farm.waiting),
        card("Finished, last hour", farm.finishedLastHour, `${farm.finishedLastFiveMinutes} in the last 5 min`));
      fill("agents-table", farm.agents.map(a => {
        const load = a.slots > 0 ? Math.round(100 * a.busy / a.slots) : 0;
        return el("tr", {}, el("td", {}, a.frontDoor ? `${a.name} (front door ${a.frontDoor})` : a.name), el("td", {}, a.kind), el("td", {}, a.systems.join(", ")), el("td", {}, `${a.busy} / ${a.slots}`),
          el("td", {}, el("span", { class: "meter", role: "img", "aria-label": `${load}% busy` }, el("span", { style: null })), ` ${load}%`));
      }));
      // Widths set through the DOM, not a style attribute in markup (the page's policy allows no inline styles).
      document.querySelectorAll("#agents-table .meter > span").forEach((bar, i) => {
        const a = farm.agents[i];
        bar.style.width = `${a.slots > 0 ? Math.round(100 * a.busy / a.slots) : 0}%`;
      });
    }, cards);
  }

  // ANSI SGR sequences to classes (f0–f15 foreground, g0–g7 background, b/i/u); every other escape sequence is dropped.
  const ansi = { fg: null, bg: null, b: false, i: false, u: false };
  function applySgr(codes) {
    for (let k = 0; k < codes.length; k++) {
      const c = codes[k];
      if (c === 0) Object.assign(ansi, { fg: null, bg: null, b: false, i: false, u: false });
      else if (c === 1) ansi.b = true;
      else if (c === 3) ansi.i = true;
      else if (c === 4) ansi.u = true;
      else if (c === 22) ansi.b = false;
      else if (c === 23) ansi.i = false;
      else if (c === 24) ansi.u = false;
      else if (c >= 30 && c <= 37) ansi.fg = c - 30;
      else if (c === 39) ansi.fg = null;
      else if (c >= 40 && c <= 47) ansi.bg = c - 40;
      else if (c === 49) ansi.bg = null;
      else if (c >= 90 && c <= 97) ansi.fg = c - 90 + 8;
      else if (c >= 100 && c <= 107) ansi.bg = c - 100;
      else if (c === 38 || c === 48) {
        // 256 colours: the first 16 map to the palette; true colour and the rest are left as they were.
        if (codes[k + 1] === 5) { const n = codes[k + 2]; if (n < 16) { if (c === 38) ansi.fg = n; else ansi.bg = n % 8; } k += 2; }
        else if (codes[k + 1] === 2) k += 4;
      }
    }
  }
  const sgr = /\x1b\[([0-9;]*)([A-Za-z])|\x1b[^[]|[\x00-\x08\x0b-\x1f\x7f]/g;
  function renderLine(text) {
    const line = el("div", { class: "l" });
    let last = 0;
    const piece = s => {
      if (!s) return;
      const classes = [ansi.fg !== null ? `f${ansi.fg}` : "", ansi.bg !== null ? `g${ansi.bg}` : "", ansi.b ? "b" : "", ansi.i ? "i" : "", ansi.u ? "u" : ""].filter(Boolean);
      line.append(classes.length ? el("span", { class: classes.join(" ") }, s) : document.createTextNode(s));
    };
    for (const m of text.matchAll(sgr)) {
      piece(text.slice(last, m.index));
      if (m[2] === "m") applySgr((m[1] || "0").split(";").map(Number));
      last = m.index + m[0].length;
    }
    piece(text.slice(last));
    return line;
  }

  // A build's log, followed through the API's Server-Sent Events. At most MaxLines lines stay in the page (a 50 MB log
  // would freeze a browser): older ones are dropped, counted, and the whole log is a link away. Lines arriving faster
  // than the screen refreshes are drawn together, once per frame.
  function liveLog(log) {
    const MaxLines = 5000;
    const id = log.dataset.build;
    const state = document.getElementById("log-state");
    const hiddenNote = document.getElementById("log-hidden");
    const follow = document.getElementById("log-follow");
    let pending = [];
    let hidden = 0;
    let shown = 0;
    let scheduled = false;
    let ended = false;
    const draw = () => {
      scheduled = false;
      const fragment = document.createDocumentFragment();
      for (const text of pending) fragment.append(renderLine(text));
      shown += pending.length;
      pending = [];
      log.append(fragment);
      while (log.childElementCount > MaxLines) { log.firstElementChild.remove(); hidden++; }
      if (hidden > 0) {
        hiddenNote.hidden = false;
        hiddenNote.textContent = `The first ${hidden.toLocaleString("en")} lines are not shown here; the whole log is in the text link above.`;
      }
      if (follow.checked) log.scrollTop = log.scrollHeight;
      if (!ended) state.textContent = `${shown.toLocaleString("en")} lines so far; following…`;
    };
    const events = new EventSource(`${api}/builds/${id}/log?follow=1`);
    events.addEventListener("line", e => {
      pending.push(e.data);
      if (pending.length > MaxLines) { const drop = pending.length - MaxLines; pending.splice(0, drop); hidden += drop; shown += drop; }
      if (!scheduled) { scheduled = true; requestAnimationFrame(draw); }
    });
    events.addEventListener("end", e => {
      ended = true;
      events.close(); // or the browser would connect again and replay the log
      draw();
      state.textContent = `${shown.toLocaleString("en")} lines. The build ended: ${e.data}.`;
      const status = document.getElementById("build-status");
      if (status) status.replaceChildren(badge(e.data));
      document.getElementById("cancel-build")?.remove();
    });
    events.onerror = () => { if (!ended) state.textContent = "The connection to the log broke; trying again…"; };
    log.addEventListener("scroll", () => {
      const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
      if (!atEnd && follow.checked && !scheduled) follow.checked = false;
    });
  }

  function buttons() {
    document.getElementById("cancel-build")?.addEventListener("click", async e => {
      const result = document.getElementById("cancel-result");
      e.target.disabled = true;
      try { await call(`/builds/${e.target.dataset.build}/cancel`, { method: "POST" }); result.textContent = "Cancelled: the build stops unless another account still waits for it."; }
      catch (error) { result.textContent = error.message; e.target.disabled = false; }
    });
    document.querySelectorAll("[data-revoke-token]").forEach(button => button.addEventListener("click", async () => {
      if (!confirm(`Revoke token ${button.dataset.revokeToken}? Whatever uses it stops working.`)) return;
      try { await call(`/tokens/${button.dataset.revokeToken}`, { method: "DELETE" }); button.closest("tr").remove(); }
      catch (error) { alert(error.message); }
    }));
    document.querySelectorAll("[data-remove-key]").forEach(button => button.addEventListener("click", async () => {
      if (!confirm(`Remove key ${button.dataset.removeKey}? It cannot log in any more.`)) return;
      try { await call(`/keys?fingerprint=${encodeURIComponent(button.dataset.removeKey)}`, { method: "DELETE" }); button.closest("tr").remove(); }
      catch (error) { alert(error.message); }
    }));
    document.querySelectorAll("[data-remove-pin]").forEach(button => button.addEventListener("click", async () => {
      if (!confirm(`Unpin ${button.dataset.removePin}? Its path goes at the next garbage collection unless something else keeps it.`)) return;
      try { await call(`/pins?name=${encodeURIComponent(button.dataset.removePin)}`, { method: "DELETE" }); button.closest("tr").remove(); }
      catch (error) { alert(error.message); }
    }));
    const form = document.getElementById("new-token");
    form?.addEventListener("submit", async e => {
      e.preventDefault();
      const result = document.getElementById("new-token-result");
      const data = new FormData(form);
      try {
        const made = await call("/tokens", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ description: data.get("description"), expires: data.get("expires") || "never", permissions: data.getAll("permissions") }),
        });
        result.replaceChildren(`Token #${made.details.id} — copy it now, it is not shown again: `, el("code", { class: "path" }, made.token));
      } catch (error) { result.textContent = error.message; }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.querySelector('[data-live="queue"]')) liveQueue();
    if (document.querySelector('[data-live="farm"]')) liveFarm();
    const log = document.getElementById("log");
    if (log) liveLog(log);
    buttons();
  });
})();
