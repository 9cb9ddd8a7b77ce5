// Sluice dashboard: fills each page from the JSON API and refreshes it.
// Hand-written, no dependencies, no build step. Every chart is inline SVG
// drawn here; every colour has a pattern or text beside it.
"use strict";

(function () {
  const TOKEN_KEY = "sluice-token";
  const TOKEN_HEADER = "X-Sluice-Token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const body = document.body;
  const content = document.getElementById("content");
  const updated = document.getElementById("updated");
  const errorBox = document.getElementById("error");
  const modeBox = document.getElementById("mode");

  // ------------------------------------------------------------------ token

  // The one-time URL carries ?token=...: keep it for this tab only and drop it
  // from the address bar (and so from history and bookmarks).
  function takeToken() {
    const params = new URLSearchParams(window.location.search);
    if (params.has("token")) {
      sessionStorage.setItem(TOKEN_KEY, params.get("token"));
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }
  const token = takeToken();

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    const s = Math.max(0, value);
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }

  function rate(perSecond) {
    if (perSecond === null || perSecond === undefined) return "–";
    if (perSecond >= 1) return +perSecond.toPrecision(4) + "/s";
    const perMinute = perSecond * 60;
    if (perMinute >= 1) return +perMinute.toPrecision(4) + "/min";
    return +(perSecond * 3600).toPrecision(4) + "/h";
  }

  function delivered(perSecond) {
    return perSecond === 0 ? "0/s" : rate(perSecond);
  }

  function totalsText(t) {
    const mean = t.grants ? t.wait_seconds / t.grants : 0;
    return plural(t.grants, "grant") + " (" + plural(t.granted_units, "unit") + "), mean wait " + seconds(mean);
  }

  function clock(iso) {
    if (!iso) return "–";
    return new Date(iso).toLocaleTimeString();
  }

  function datetime(iso) {
    if (!iso) return "–";
    return new Date(iso).toLocaleString();
  }

  async function api(url, options) {
    const headers = Object.assign({ Accept: "application/json" }, (options || {}).headers);
    if (token) headers[TOKEN_HEADER] = token;
    const response = await fetch(url, Object.assign({}, options, { headers }));
    let data = {};
    try {
      data = await response.json();
    } catch (e) {
      data = {};
    }
    if (!response.ok) {
      const error = new Error(data.error || response.status + " " + response.statusText);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function showError(message) {
    errorBox.hidden = !message;
    errorBox.textContent = message || "";
  }

  function stamp(text) {
    updated.textContent = text;
  }

  // Run fn now and every ms; pause while the tab is hidden; show failures.
  function every(ms, fn) {
    let timer = null;
    let stopped = false;
    async function tick() {
      timer = null;
      if (document.hidden) return;
      try {
        const again = await fn();
        showError("");
        if (again === false) stopped = true;
      } catch (e) {
        showError(e.message);
      }
      if (!stopped) timer = setTimeout(tick, ms);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer === null && !stopped) tick();
    });
    tick();
  }

  // Replace a node's children, keeping keyboard focus on the element with the same key.
  function replaceKeepingFocus(parent, ...children) {
    const focused = document.activeElement;
    const key = focused && parent.contains(focused) ? focused.getAttribute("data-key") : null;
    parent.replaceChildren(...children.flat());
    if (key) {
      const again = parent.querySelector('[data-key="' + CSS.escape(key) + '"]');
      if (again) again.focus();
    }
  }

  function table(caption, headers, rows, empty) {
    if (!rows.length) return el("p", { class: "empty", text: empty });
    return el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { class: "responsive" },
        el("caption", { class: "visually-hidden", text: caption }),
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
        el(
          "tbody",
          {},
          rows.map((cells) =>
            el("tr", {}, cells.map((cell, i) => el("td", { "data-label": headers[i] }, cell)))
          )
        )
      )
    );
  }

  function gauge(inUse, slots, active) {
    const width = 120;
    const height = 14;
    const label = slots === null ? inUse + " units in use (no slot limit)" : inUse + " of " + slots + " slots in use";
    const fraction = slots ? Math.min(1, inUse / slots) : 0;
    const full = slots !== null && inUse >= slots;
    const bar = svg(
      "svg",
      { class: "gauge", width, height, viewBox: "0 0 " + width + " " + height, "aria-hidden": "true", focusable: "false" },
      svg("rect", { class: "gauge-track", x: 0, y: 0, width, height, rx: 3 }),
      svg("rect", {
        class: "gauge-fill" + (full ? " full" : "") + (active ? "" : " inactive"),
        x: 0,
        y: 0,
        width: Math.round(width * fraction),
        height,
        rx: 3,
      })
    );
    return el(
      "span",
      { class: "gauge-wrap", role: "img", "aria-label": label },
      bar,
      el("span", { class: "gauge-text", text: inUse + " / " + (slots === null ? "–" : slots) + (full ? " full" : "") })
    );
  }

  function plural(count, word) {
    return count + " " + word + (count === 1 ? "" : "s");
  }

  function tokenText(nextTokenIn) {
    if (nextTokenIn === null || nextTokenIn === undefined) return "–";
    if (nextTokenIn <= 0) return "now";
    return "in " + seconds(nextTokenIn);
  }

  // ------------------------------------------------------------------ session

  async function session() {
    const data = await api("/api/session");
    modeBox.textContent = data.admin ? "Admin" : "Read-only";
    modeBox.className = "mode " + (data.admin ? "mode-admin" : "mode-read-only");
    modeBox.title = data.admin
      ? "Admin actions are enabled with the token from `sluice ui`."
      : "Open the URL with the token printed by `sluice ui` to change limits.";
    return data;
  }

  // ------------------------------------------------------------------ limits page

  async function limitsPage() {
    const info = await session();
    const holder = el("div", {});
    content.replaceChildren(holder);
    every(info.interval * 1000, async () => {
      const data = await api("/api/limits");
      if (data.error) showError("The store could not be read: " + data.error);
      const rows = data.limits.map((l) => [
        el("a", { href: "/limits/" + encodeURIComponent(l.name).replace(/%2F/g, "/"), "data-key": "limit:" + l.name, text: l.name }),
        gauge(l.in_use, l.slots, l.active),
        l.rate === null ? "–" : rate(l.rate) + " (burst " + l.burst + ")",
        tokenText(l.next_token_in),
        l.grants.toLocaleString("en") + (l.delivered_rate === null ? "" : " (" + delivered(l.delivered_rate) + ")"),
        String(l.holders),
        l.waiters + (l.waiters ? " (" + l.waiting_units + " units)" : ""),
        el("span", { class: l.active ? "badge on" : "badge off", text: l.active ? "active" : "disabled" }),
      ]);
      replaceKeepingFocus(
        holder,
        table(
          "Every limit, refreshed every " + seconds(info.interval),
          ["Limit", "In use / slots", "Rate", "Next token", "Grants (rate, last min)", "Holders", "Waiters", "Active"],
          rows,
          "No limits yet. Create one with: sluice limit create NAME --slots N"
        )
      );
      stamp(plural(data.limits.length, "limit") + " · updated " + clock(data.sampled_at));
    });
  }

  // ------------------------------------------------------------------ limit page

  function chart(history, slots) {
    const figure = el("figure", { class: "chart" });
    const width = Math.max(280, Math.min(content.clientWidth || 600, 1100));
    const height = 180;
    const pad = { left: 36, right: 10, top: 10, bottom: 26 };
    const now = Date.now() / 1000;
    const span = history.length ? Math.max(60, now - history[0].at) : 60;
    const top = Math.max(1, slots || 0, ...history.map((p) => Math.max(p.in_use, p.waiting)));
    const x = (t) => pad.left + ((t - (now - span)) / span) * (width - pad.left - pad.right);
    const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
    const line = (key) => history.map((p) => x(p.at).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ");
    const maxIn = Math.max(0, ...history.map((p) => p.in_use));
    const maxWait = Math.max(0, ...history.map((p) => p.waiting));
    const last = history[history.length - 1] || { in_use: 0, waiting: 0 };
    const summary =
      "Over the last " + seconds(span) + ": units in use now " + last.in_use + " (most " + maxIn +
      "), requests waiting now " + last.waiting + " (most " + maxWait + ")" + (slots ? ", of " + slots + " slots." : ".");
    const ticks = [0, Math.ceil(top / 2), top].filter((v, i, all) => all.indexOf(v) === i);
    const graph = svg(
      "svg",
      { width, height, viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": summary },
      ticks.map((v) =>
        svg("g", { class: "tick" },
          svg("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
          svg("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end", text: String(v) }))
      ),
      slots ? svg("line", { class: "slots-line", x1: pad.left, x2: width - pad.right, y1: y(slots), y2: y(slots) }) : null,
      svg("text", { class: "axis", x: pad.left, y: height - 6, text: "−" + seconds(span) }),
      svg("text", { class: "axis", x: width - pad.right, y: height - 6, "text-anchor": "end", text: "now" }),
      history.length ? svg("polyline", { class: "line-in-use", points: line("in_use") }) : null,
      history.length ? svg("polyline", { class: "line-waiting", points: line("waiting") }) : null
    );
    figure.append(
      graph,
      el(
        "figcaption",
        {},
        el("span", { class: "key key-in-use", "aria-hidden": "true" }), " units in use (solid)  ",
        el("span", { class: "key key-waiting", "aria-hidden": "true" }), " requests waiting (dashed)  ",
        slots ? [el("span", { class: "key key-slots", "aria-hidden": "true" }), " slots (dotted)"] : null,
        el("p", { class: "visually-hidden", text: summary })
      )
    );
    return figure;
  }

  function who(entry) {
    let label = entry.holder || "–";
    if (entry.task_run_id) {
      label = el("a", { href: "/task-runs/" + entry.task_run_id, "data-key": "run:" + entry.task_run_id, text: entry.holder });
    } else if (entry.flow_run_id) {
      label = el("a", { href: "/runs/" + entry.flow_run_id, "data-key": "flow:" + entry.flow_run_id, text: entry.holder });
    }
    const count = entry.count > 1 ? " ×" + entry.count : "";
    return el("span", {}, label, count, el("br"), el("span", { class: "muted", text: entry.host + " pid " + entry.pid }));
  }

  function confirmDialog(question) {
    return new Promise((resolve) => {
      const ok = el("button", { type: "button", class: "danger", text: "Confirm" });
      const cancel = el("button", { type: "button", text: "Cancel" });
      const dialog = el(
        "dialog",
        { "aria-labelledby": "confirm-question", class: "confirm" },
        el("p", { id: "confirm-question", text: question }),
        el("div", { class: "buttons" }, cancel, ok)
      );
      const done = (answer) => {
        dialog.close();
        dialog.remove();
        resolve(answer);
      };
      ok.addEventListener("click", () => done(true));
      cancel.addEventListener("click", () => done(false));
      dialog.addEventListener("cancel", (event) => {
        event.preventDefault();
        done(false);
      });
      document.body.append(dialog);
      dialog.showModal();
      cancel.focus();
    });
  }

  function adminPanel(name, result, refresh) {
    async function act(action, question, payload) {
      if (!(await confirmDialog(question))) {
        result.textContent = "Cancelled: nothing changed.";
        result.className = "result";
        return;
      }
      try {
        const data = await api("/api/admin/" + action, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(Object.assign({ limit: name }, payload || {})),
        });
        result.textContent = data.message;
        result.className = "result ok";
      } catch (e) {
        result.textContent = "Failed: " + e.message;
        result.className = "result failed";
      }
      await refresh();
    }
    const field = (id, label, hint) =>
      el("div", { class: "field" },
        el("label", { for: id, text: label }),
        el("input", { id, name: id, type: "text", inputmode: id === "rate" ? "text" : "numeric", autocomplete: "off", "aria-describedby": id + "-hint" }),
        el("span", { id: id + "-hint", class: "hint", text: hint }));
    const form = el(
      "form",
      { class: "update", "aria-labelledby": "update-heading", novalidate: true },
      el("h3", { id: "update-heading", text: "Change settings" }),
      field("slots", "Slots", "a whole number, or none to remove; empty keeps it"),
      field("rate", "Rate", "10/s, 600/min, 1/5s, or none to remove; empty keeps it"),
      field("burst", "Burst", "a whole number, or none for the default; empty keeps it"),
      el("button", { type: "submit", text: "Update…" })
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const payload = {};
      const parts = [];
      for (const key of ["slots", "rate", "burst"]) {
        const raw = form.elements[key].value.trim();
        if (!raw) continue;
        if (raw.toLowerCase() === "none") payload[key] = null;
        else if (key === "rate") payload[key] = raw;
        else payload[key] = Number(raw);
        parts.push(key + " → " + raw);
      }
      if (!parts.length) {
        result.textContent = "Nothing to change: fill in at least one field.";
        result.className = "result failed";
        return;
      }
      act("update", "Update limit “" + name + "”: " + parts.join(", ") + "?", payload);
    });
    return el(
      "section",
      { class: "admin", "aria-labelledby": "admin-heading" },
      el("h2", { id: "admin-heading", text: "Admin" }),
      el("div", { class: "buttons" },
        el("button", { type: "button", text: "Enable…", onclick: () => act("enable", "Enable limit “" + name + "”? It will count again.") }),
        el("button", { type: "button", text: "Disable…", onclick: () => act("disable", "Disable limit “" + name + "”? It will admit everyone and record nothing until enabled.") }),
        el("button", { type: "button", class: "danger", text: "Reset…", onclick: () => act("reset", "Reset limit “" + name + "”? Every holder is released (their code gets LeaseLost) and the rate bucket refills.") })),
      form
    );
  }

  async function limitPage() {
    const name = body.dataset.name;
    const info = await session();
    const summary = el("div", {});
    const chartBox = el("section", { "aria-labelledby": "chart-heading" }, el("h2", { id: "chart-heading", text: "In use and waiting" }));
    const chartSlot = el("div", {});
    chartBox.append(chartSlot);
    const holders = el("section", { "aria-labelledby": "holders-heading" }, el("h2", { id: "holders-heading", text: "Holders" }));
    const holdersSlot = el("div", { id: "holders" });
    holders.append(holdersSlot);
    const waiters = el("section", { "aria-labelledby": "waiters-heading" }, el("h2", { id: "waiters-heading", text: "Waiters" }));
    const waitersSlot = el("div", { id: "waiters" });
    waiters.append(waitersSlot);
    const result = el("p", { class: "result", role: "status", "aria-live": "polite" });
    const sections = [summary, chartBox, holders, waiters];
    let refreshNow = async () => {};
    if (info.admin) sections.push(adminPanel(name, result, () => refreshNow()), result);
    content.replaceChildren(...sections);

    async function refresh() {
      const l = await api("/api/limits/" + encodeURIComponent(name).replace(/%2F/g, "/"));
      replaceKeepingFocus(
        summary,
        el("dl", { class: "facts" },
          el("dt", { text: "In use" }), el("dd", {}, gauge(l.in_use, l.slots, l.active)),
          el("dt", { text: "Rate" }), el("dd", { text: l.rate === null ? "none" : rate(l.rate) + ", burst " + l.burst }),
          el("dt", { text: "Next token" }), el("dd", { text: tokenText(l.next_token_in) }),
          el("dt", { text: "Waiters" }), el("dd", { text: String(l.waiters.length) }),
          el("dt", { text: "Granted" }), el("dd", { text: totalsText(l.totals) }),
          el("dt", { text: "Delivered" }), el("dd", { text: l.delivered_rate === null ? "– (measured over the last minute)" : delivered(l.delivered_rate) + " over the last minute" + (l.rate === null ? "" : ", of " + rate(l.rate) + " configured") }),
          el("dt", { text: "Timed out" }), el("dd", { text: l.totals.timeouts.toLocaleString("en") }),
          el("dt", { text: "Expired leases reclaimed" }), el("dd", { text: l.totals.expired_leases_reclaimed.toLocaleString("en") }),
          el("dt", { text: "Active" }), el("dd", {}, el("span", { class: l.active ? "badge on" : "badge off", text: l.active ? "active" : "disabled: admits everyone" })),
          el("dt", { text: "Lease TTL" }), el("dd", { text: seconds(l.lease_ttl) }))
      );
      chartSlot.replaceChildren(chart(l.history, l.slots));
      replaceKeepingFocus(
        holdersSlot,
        table(
          "Holders of " + name,
          ["Lease", "Fence", "Occupy", "Holder", "Held for", "Expires in"],
          l.holders.map((h) => [el("code", { class: "lease", text: h.lease_id }), String(h.fence), String(h.occupy), who(h), seconds(h.held_for), seconds(h.expires_in)]),
          "No holders."
        )
      );
      replaceKeepingFocus(
        waitersSlot,
        table(
          "Waiters of " + name + ", in queue order",
          ["Position", "Occupy", "Who", "Waiting for"],
          l.waiters.map((w) => [String(w.position), String(w.occupy), who(w), seconds(w.waiting_for)]),
          "No waiters."
        )
      );
      stamp(plural(l.holders.length, "holder") + ", " + plural(l.waiters.length, "waiter") + " · updated " + clock(l.sampled_at));
    }
    refreshNow = refresh;
    every(info.interval * 1000, refresh);
  }

  // ------------------------------------------------------------------ runs page

  async function runsPage() {
    await session();
    const holder = el("div", {});
    content.replaceChildren(holder);
    every(5000, async () => {
      const data = await api("/api/runs?limit=50");
      const rows = data.runs.map((r) => {
        const share = r.elapsed ? Math.round((100 * r.wait_seconds) / r.elapsed) : 0;
        return [
          el("a", { href: "/runs/" + r.id, "data-key": "run:" + r.id }, el("code", { text: r.id.slice(0, 12) }), " ", r.flow),
          el("span", { class: "state state-" + r.state.toLowerCase(), text: r.state }),
          datetime(r.started_at || r.created_at),
          r.ended_at ? seconds(r.duration) : seconds(r.elapsed) + " so far",
          seconds(r.wait_seconds) + " (" + share + "%)",
          seconds(r.task_wait_seconds),
          String(r.task_runs),
        ];
      });
      replaceKeepingFocus(
        holder,
        table(
          "Recent flow runs, newest first",
          ["Run", "State", "Started", "Duration", "Waiting (wall)", "Task time waiting", "Task runs"],
          rows,
          "No flow runs recorded yet."
        )
      );
      stamp(plural(data.runs.length, "run") + " · updated " + new Date().toLocaleTimeString());
    });
  }

  // ------------------------------------------------------------------ run page

  const KINDS = {
    pending: "pending (upstream futures, admission)",
    limit: "waiting on a limit",
    worker: "waiting for a worker",
    running: "running",
    retry: "retry delay",
    failed: "running, then failed",
  };

  function patterns() {
    // One hidden set of fills; every chart and legend swatch refers to them.
    const pattern = (id, base, ...marks) =>
      svg("pattern", { id: "fill-" + id, patternUnits: "userSpaceOnUse", width: 8, height: 8 },
        svg("rect", { width: 8, height: 8, fill: base }), ...marks);
    return svg(
      "svg",
      { width: 0, height: 0, class: "defs", "aria-hidden": "true", focusable: "false" },
      svg("defs", {},
        pattern("running", "#1a7f37"),
        pattern("limit", "#a04100", svg("path", { d: "M-2,2 l4,-4 M0,8 l8,-8 M6,10 l4,-4", stroke: "#ffffff", "stroke-width": 1.5 })),
        pattern("worker", "#6639ba", svg("circle", { cx: 4, cy: 4, r: 1.6, fill: "#ffffff" })),
        pattern("retry", "#0550ae", svg("path", { d: "M0,4 h8", stroke: "#ffffff", "stroke-width": 1.5 })),
        pattern("pending", "#57606a", svg("path", { d: "M4,0 v8", stroke: "#ffffff", "stroke-width": 1 })),
        pattern("failed", "#b3141f", svg("path", { d: "M0,0 l8,8 M8,0 l-8,8", stroke: "#ffffff", "stroke-width": 1.5 })))
    );
  }

  function swatch(kind) {
    return svg("svg", { width: 18, height: 12, class: "swatch", "aria-hidden": "true", focusable: "false" },
      svg("rect", { width: 18, height: 12, fill: "url(#fill-" + kind + ")", stroke: "#1f2328", "stroke-width": 0.5 }));
  }

  function segmentText(s) {
    let text = KINDS[s.kind];
    if (s.kind === "limit") text = "waiting on limit “" + s.limit + "”" + (s.position ? ", queue position " + s.position : "");
    if (s.kind === "failed") text = "running, then " + s.ended_by;
    return text + ": " + seconds(s.end - s.start) + " (from +" + seconds(s.start) + " to +" + seconds(s.end) + ")";
  }

  function gantt(run, tooltip) {
    const narrow = content.clientWidth < 560;
    const width = Math.max(300, Math.min(content.clientWidth || 800, 1150));
    const labelWidth = narrow ? 0 : 180;
    const rowHeight = narrow ? 38 : 26;
    const barHeight = 16;
    const axis = 24;
    const height = axis + run.task_runs.length * rowHeight + 6;
    const span = Math.max(run.span, 0.001);
    const plot = width - labelWidth - 12;
    const x = (t) => labelWidth + (t / span) * plot;
    const chartSvg = svg("svg", {
      class: "gantt",
      width,
      height,
      viewBox: "0 0 " + width + " " + height,
      role: "group",
      "aria-label": "Gantt chart: one bar per task run, " + run.task_runs.length + " task runs over " + seconds(span),
    });
    for (const fraction of narrow ? [0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1]) {
      const tx = x(fraction * span);
      chartSvg.append(
        svg("line", { class: "grid", x1: tx, x2: tx, y1: axis - 4, y2: height }),
        svg("text", { class: "axis", x: tx, y: 14, "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle", text: "+" + seconds(fraction * span) })
      );
    }
    run.task_runs.forEach((t, i) => {
      const top = axis + i * rowHeight;
      const barTop = narrow ? top + 18 : top + (rowHeight - barHeight) / 2;
      const description = t.task + " (" + t.state + "): " + t.segments.map(segmentText).join("; ");
      const group = svg("g", {
        class: "gantt-bar",
        "data-task-run": t.id,
        "data-key": "bar:" + t.id,
        tabindex: 0,
        role: "img",
        "aria-label": description,
      });
      group.append(
        svg("text", { class: "bar-label", x: narrow ? 2 : labelWidth - 8, y: narrow ? top + 13 : top + rowHeight / 2 + 4, "text-anchor": narrow ? "start" : "end", text: t.task + " · " + t.state })
      );
      for (const s of t.segments) {
        const rect = svg("rect", {
          class: "segment segment-" + s.kind,
          x: x(s.start),
          y: barTop,
          width: Math.max(1.5, x(s.end) - x(s.start)),
          height: barHeight,
          fill: "url(#fill-" + s.kind + ")",
          "data-kind": s.kind,
        }, svg("title", { text: segmentText(s) }));
        rect.addEventListener("mousemove", (event) => showTip(tooltip, t.task, s, event.clientX, event.clientY));
        rect.addEventListener("mouseleave", () => (tooltip.hidden = true));
        group.append(rect);
      }
      group.addEventListener("focus", () => {
        const box = group.getBoundingClientRect();
        tooltip.hidden = false;
        tooltip.textContent = description;
        placeTip(tooltip, box.left + 8, box.bottom);
      });
      group.addEventListener("blur", () => (tooltip.hidden = true));
      chartSvg.append(group);
    });
    return chartSvg;
  }

  function showTip(tooltip, task, segment, clientX, clientY) {
    tooltip.hidden = false;
    tooltip.textContent = task + " — " + segmentText(segment);
    placeTip(tooltip, clientX + 12, clientY + 12);
  }

  function placeTip(tooltip, left, top) {
    const maxLeft = window.innerWidth - tooltip.offsetWidth - 8;
    tooltip.style.left = Math.max(4, Math.min(left, maxLeft)) + window.scrollX + "px";
    tooltip.style.top = top + window.scrollY + "px";
  }

  function whyTable(why) {
    const rows = why.causes.map((c) => [
      c.label,
      seconds(c.wall_seconds) + " (" + (why.wall_seconds ? ((100 * c.wall_seconds) / why.wall_seconds).toFixed(1) : "0.0") + "%)",
      seconds(c.task_seconds),
      c.kind === "flow" ? "–" : String(c.task_runs),
    ]);
    return table("Where the wall time went, by cause", ["Cause", "Wall time", "Task time", "Task runs"], rows, "No time recorded yet.");
  }

  async function runPage() {
    const runId = body.dataset.run;
    await session();
    const tooltip = el("div", { class: "tooltip", role: "tooltip", hidden: true });
    document.body.append(tooltip, patterns());
    const facts = el("div", {});
    const chartSlot = el("div", { class: "gantt-wrap" });
    const legend = el("ul", { class: "legend", "aria-label": "Legend" },
      Object.entries(KINDS).map(([kind, label]) => el("li", {}, swatch(kind), " " + label)));
    const whySlot = el("div", {});
    const whyText = el("pre", { class: "why-text" });
    const tasksSlot = el("div", {});
    content.replaceChildren(
      facts,
      el("section", { "aria-labelledby": "gantt-heading" }, el("h2", { id: "gantt-heading", text: "Task runs over time" }),
        el("p", { class: "hint", text: "Hover a bar, or focus it with Tab, for the limit and queue position." }), legend, chartSlot),
      el("section", { "aria-labelledby": "why-heading" }, el("h2", { id: "why-heading", text: "Why it took this long" }), whySlot,
        el("details", {}, el("summary", { text: "As `sluice run why` prints it" }), whyText)),
      el("section", { "aria-labelledby": "tasks-heading" }, el("h2", { id: "tasks-heading", text: "Task runs" }), tasksSlot)
    );
    every(2000, async () => {
      const run = await api("/api/runs/" + encodeURIComponent(runId));
      replaceKeepingFocus(
        facts,
        el("dl", { class: "facts" },
          el("dt", { text: "Run" }), el("dd", {}, el("code", { text: run.id })),
          el("dt", { text: "State" }), el("dd", {}, el("span", { class: "state state-" + run.state.toLowerCase(), text: run.state + (run.message ? ": " + run.message : "") })),
          el("dt", { text: "Started" }), el("dd", { text: datetime(run.started_at || run.created_at) }),
          el("dt", { text: "Duration" }), el("dd", { text: run.ended_at ? seconds(run.duration) : "running" }),
          el("dt", { text: "Task runs" }), el("dd", { text: String(run.task_runs.length) }))
      );
      replaceKeepingFocus(chartSlot, run.task_runs.length ? gantt(run, tooltip) : el("p", { class: "empty", text: "No task runs." }));
      replaceKeepingFocus(whySlot, whyTable(run.why));
      whyText.textContent = run.why_text;
      replaceKeepingFocus(
        tasksSlot,
        table(
          "Task runs of this flow run",
          ["Task run", "State", "Waited", "Ran", "Tries", "Limits", "Message"],
          run.task_runs.map((t) => [
            el("span", {}, el("code", { id: "task-" + t.id, text: t.id.slice(0, 12) }), " " + t.task),
            t.state,
            seconds(t.waited),
            seconds(t.ran),
            String(t.attempts),
            t.limits.join(", ") || "–",
            t.message || "",
          ]),
          "No task runs."
        )
      );
      stamp(run.ended_at ? "Ended " + datetime(run.ended_at) : "Running · updated " + new Date().toLocaleTimeString());
      return !run.ended_at; // stop refreshing once the run has ended
    });
  }

  // ------------------------------------------------------------------ start

  const pages = { limits: limitsPage, limit: limitPage, runs: runsPage, run: runPage };
  const start = pages[body.dataset.page];
  if (start) {
    start().catch((e) => showError(e.message));
  } else if (body.dataset.message) {
    content.replaceChildren(el("p", { text: body.dataset.message }), el("p", {}, el("a", { href: "/", text: "Back to the limits" })));
    session().catch(() => {});
  }
})();
