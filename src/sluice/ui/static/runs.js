// Sluice dashboard: the runs list (filters by flow, state, time and id prefix) and a run's
// page (why it took this long first, then a Gantt chart that groups task runs by task when
// there are many, with its time axis kept in view, then its tracebacks and log records,
// then every task run).
"use strict";

window.SluiceRuns = (function () {
  const {
    body, content, el, svg, seconds, datetime, clock, api, showError, stamp, every,
    replaceKeepingFocus, table, plural, session, onResize, chartWidth, section, link,
  } = window.Sluice;

  const STATES = ["Pending", "Running", "Retrying", "Completed", "Failed", "Crashed", "Cancelled", "TimedOut"];
  const GROUP_ABOVE = 50; // task runs beyond which the Gantt shows one row per task
  const TASK_ROWS = 200; // task runs listed before "show all"

  // ------------------------------------------------------------------ runs page

  const FILTERS = [
    ["flow", "Flow", "its name"],
    ["state", "State", ""],
    ["since", "Created since", "2h, 7d, or 2025-01-31T12:00:00Z"],
    ["until", "Created until", "30m, or an ISO time (UTC)"],
    ["id", "Id starts with", "hex digits"],
  ];

  function filterForm(params, apply) {
    const field = ([key, label, hint]) => {
      const input = key === "state"
        ? el("select", { id: "filter-state", name: "state" },
            el("option", { value: "", text: "any" }),
            STATES.map((s) => el("option", { value: s, text: s, selected: params.get("state") === s })))
        : el("input", { id: "filter-" + key, name: key, type: "text", value: params.get(key) || "", autocomplete: "off", placeholder: hint, spellcheck: "false" });
      return el("div", { class: "field" }, el("label", { for: "filter-" + key, text: label }), input);
    };
    const form = el("form", { class: "filters", role: "search", "aria-label": "Filter flow runs" },
      FILTERS.map(field),
      el("div", { class: "buttons" },
        el("button", { type: "submit", text: "Filter" }),
        el("button", { type: "button", text: "Clear", onclick: () => { form.reset(); for (const e of form.elements) if (e.name) e.value = ""; apply(new URLSearchParams()); } })));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const next = new URLSearchParams();
      for (const [key] of FILTERS) {
        const value = form.elements[key].value.trim();
        if (value) next.set(key, value);
      }
      apply(next);
    });
    return form;
  }

  async function runsPage() {
    await session();
    let params = new URLSearchParams(location.search);
    const holder = el("div", {});
    let refresh = async () => {};
    const apply = (next) => {
      params = next;
      const query = params.toString();
      history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
      refresh().catch((e) => showError(e.message));
    };
    content.replaceChildren(filterForm(params, apply), holder);
    refresh = async () => {
      const query = new URLSearchParams(params);
      query.set("limit", "50");
      const data = await api("/api/runs?" + query.toString());
      const rows = data.runs.map((r) => {
        const share = r.elapsed ? Math.round((100 * r.wait_seconds) / r.elapsed) : 0;
        return [
          el("a", { href: "/runs/" + r.id, "data-key": "run:" + r.id }, el("code", { text: r.id.slice(0, 8) }), " ", r.flow),
          el("span", { class: "state state-" + r.state.toLowerCase(), text: r.state }),
          datetime(r.started_at || r.created_at),
          r.ended_at ? seconds(r.duration) : seconds(r.elapsed) + " so far",
          seconds(r.wait_seconds) + " (" + share + "%)",
          seconds(r.task_wait_seconds),
          String(r.task_runs),
        ];
      });
      const filtered = [...params.keys()].length > 0;
      replaceKeepingFocus(
        holder,
        table(
          "Flow runs, newest first",
          ["Run", "State", "Started (UTC)", "Duration", "Waiting (wall)", "Task time waiting", "Task runs"],
          rows,
          filtered ? "No flow runs match these filters." : "No flow runs recorded yet."
        )
      );
      stamp(plural(data.runs.length, "run") + (filtered ? " matching" : "") + " · updated " + clock(new Date()));
    };
    every(5000, () => refresh());
  }

  // ------------------------------------------------------------------ run page: Gantt

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

  function axisSvg(x, width, span, narrow, labelWidth) {
    const height = 22;
    const axis = svg("svg", { class: "gantt-axis", width, height, viewBox: "0 0 " + width + " " + height, "aria-hidden": "true", focusable: "false" });
    for (const fraction of narrow ? [0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1]) {
      const tx = x(fraction * span);
      axis.append(
        svg("line", { class: "grid", x1: tx, x2: tx, y1: 16, y2: height }),
        svg("text", { class: "axis", x: tx, y: 13, "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle", text: "+" + seconds(fraction * span) })
      );
    }
    if (labelWidth) axis.append(svg("text", { class: "axis", x: 2, y: 13, text: "since start" }));
    return axis;
  }

  function gridLines(chartSvg, x, span, narrow, height) {
    for (const fraction of narrow ? [0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1]) {
      const tx = x(fraction * span);
      chartSvg.append(svg("line", { class: "grid", x1: tx, x2: tx, y1: 0, y2: height }));
    }
  }

  function geometry(run, holder) {
    const width = chartWidth(holder, 800, 1150);
    const narrow = width < 560;
    const labelWidth = narrow ? 0 : 190;
    const span = Math.max(run.span, 0.001);
    const plot = width - labelWidth - 12;
    return { width, narrow, labelWidth, span, plot, x: (t) => labelWidth + (t / span) * plot };
  }

  // One row per task run: each state a span of its bar.
  function perRunRows(run, tooltip, g) {
    const rowHeight = g.narrow ? 38 : 26;
    const barHeight = 16;
    const height = run.task_runs.length * rowHeight + 6;
    const chartSvg = svg("svg", {
      class: "gantt", width: g.width, height, viewBox: "0 0 " + g.width + " " + height, role: "group",
      "aria-label": "Gantt chart: one bar per task run, " + run.task_runs.length + " task runs over " + seconds(g.span),
    });
    gridLines(chartSvg, g.x, g.span, g.narrow, height);
    run.task_runs.forEach((t, i) => {
      const top = i * rowHeight;
      const barTop = g.narrow ? top + 18 : top + (rowHeight - barHeight) / 2;
      const description = t.task + " (" + t.state + "): " + t.segments.map(segmentText).join("; ");
      const group = svg("g", { class: "gantt-bar", "data-task-run": t.id, "data-key": "bar:" + t.id, tabindex: 0, role: "img", "aria-label": description });
      group.append(svg("text", { class: "bar-label", x: g.narrow ? 2 : g.labelWidth - 8, y: g.narrow ? top + 13 : top + rowHeight / 2 + 4, "text-anchor": g.narrow ? "start" : "end", text: t.task + " · " + t.state }));
      for (const s of t.segments) {
        const rect = svg("rect", {
          class: "segment segment-" + s.kind, x: g.x(s.start), y: barTop,
          width: Math.max(1.5, g.x(s.end) - g.x(s.start)), height: barHeight,
          fill: "url(#fill-" + s.kind + ")", "data-kind": s.kind,
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

  const STACK = ["running", "failed", "worker", "limit", "retry", "pending"];

  // Task runs of each task, and how many were in each state at each moment (density).
  function taskGroups(run, bins) {
    const width = Math.max(run.span, 0.001) / bins;
    const byTask = new Map();
    for (const t of run.task_runs) {
      if (!byTask.has(t.task)) byTask.set(t.task, { task: t.task, count: 0, states: {}, load: Array.from({ length: bins }, () => ({})) });
      const g = byTask.get(t.task);
      g.count += 1;
      g.states[t.state] = (g.states[t.state] || 0) + 1;
      for (const s of t.segments) {
        const first = Math.max(0, Math.floor(s.start / width));
        const last = Math.min(bins - 1, Math.floor(s.end / width));
        for (let b = first; b <= last; b++) {
          const overlap = Math.min(s.end, (b + 1) * width) - Math.max(s.start, b * width);
          if (overlap > 0) g.load[b][s.kind] = (g.load[b][s.kind] || 0) + overlap / width;
        }
      }
    }
    for (const g of byTask.values()) {
      g.peak = Math.max(1e-9, ...g.load.map((slot) => STACK.reduce((n, k) => n + (slot[k] || 0), 0)));
      g.most = {};
      for (const k of STACK) g.most[k] = Math.max(0, ...g.load.map((slot) => slot[k] || 0));
    }
    return { groups: [...byTask.values()], width };
  }

  function groupText(g) {
    const states = Object.entries(g.states).map(([s, n]) => n + " " + s).join(", ");
    const most = STACK.filter((k) => g.most[k] >= 0.05).map((k) => "up to " + Math.round(g.most[k] * 10) / 10 + " " + KINDS[k]);
    return g.task + ": " + plural(g.count, "task run") + " (" + states + ")" + (most.length ? "; at once, on average per slice: " + most.join(", ") : "");
  }

  // One row per task: how many of its task runs were in each state over time.
  function groupedRows(run, tooltip, g) {
    const bins = Math.max(20, Math.min(300, Math.floor(g.plot / 3)));
    const { groups, width: binSeconds } = taskGroups(run, bins);
    const rowHeight = g.narrow ? 70 : 56;
    const areaHeight = g.narrow ? 44 : 44;
    const height = groups.length * rowHeight + 6;
    const chartSvg = svg("svg", {
      class: "gantt gantt-grouped", width: g.width, height, viewBox: "0 0 " + g.width + " " + height, role: "group",
      "aria-label": "Gantt chart grouped by task: " + plural(groups.length, "task") + ", " + plural(run.task_runs.length, "task run") + " over " + seconds(g.span),
    });
    gridLines(chartSvg, g.x, g.span, g.narrow, height);
    groups.forEach((grp, i) => {
      const top = i * rowHeight;
      const areaTop = g.narrow ? top + 22 : top + (rowHeight - areaHeight) / 2;
      const description = groupText(grp);
      const row = svg("g", { class: "gantt-group", "data-task": grp.task, "data-count": grp.count, "data-key": "group:" + grp.task, tabindex: 0, role: "img", "aria-label": description });
      const label = g.narrow
        ? [svg("text", { class: "bar-label", x: 2, y: top + 14, text: grp.task + " · " + plural(grp.count, "run") })]
        : [svg("text", { class: "bar-label", x: g.labelWidth - 8, y: top + rowHeight / 2 - 2, "text-anchor": "end", text: grp.task }),
           svg("text", { class: "axis", x: g.labelWidth - 8, y: top + rowHeight / 2 + 13, "text-anchor": "end", text: plural(grp.count, "run") + ", peak " + Math.round(grp.peak * 10) / 10 })];
      row.append(...label, svg("rect", { class: "group-track", x: g.labelWidth, y: areaTop, width: g.plot, height: areaHeight }));
      grp.load.forEach((slot, b) => {
        let base = areaTop + areaHeight;
        const x0 = g.x(b * binSeconds);
        const w = Math.max(0.8, g.x((b + 1) * binSeconds) - x0);
        for (const kind of STACK) {
          const value = slot[kind];
          if (!value) continue;
          const h = (value / grp.peak) * areaHeight;
          base -= h;
          row.append(svg("rect", { class: "density segment-" + kind, x: x0.toFixed(1), y: base.toFixed(2), width: w.toFixed(2), height: h.toFixed(2), fill: "url(#fill-" + kind + ")", "data-kind": kind }));
        }
      });
      row.addEventListener("mousemove", (event) => {
        const box = chartSvg.getBoundingClientRect();
        const t = ((event.clientX - box.left - g.labelWidth) / g.plot) * g.span;
        const b = Math.min(bins - 1, Math.max(0, Math.floor(t / binSeconds)));
        const slot = grp.load[b];
        const parts = STACK.filter((k) => slot[k] >= 0.05).map((k) => Math.round(slot[k] * 10) / 10 + " " + KINDS[k]);
        tooltip.hidden = false;
        tooltip.textContent = grp.task + " at +" + seconds(b * binSeconds) + "–" + seconds((b + 1) * binSeconds) + ": " + (parts.join(", ") || "none active");
        placeTip(tooltip, event.clientX + 12, event.clientY + 12);
      });
      row.addEventListener("mouseleave", () => (tooltip.hidden = true));
      row.addEventListener("focus", () => {
        const box = row.getBoundingClientRect();
        tooltip.hidden = false;
        tooltip.textContent = description;
        placeTip(tooltip, box.left + 8, box.bottom);
      });
      row.addEventListener("blur", () => (tooltip.hidden = true));
      chartSvg.append(row);
    });
    return chartSvg;
  }

  // The chart in a box that scrolls with its time axis kept at its top.
  function gantt(run, tooltip, holder, grouped) {
    const g = geometry(run, holder);
    const rows = grouped ? groupedRows(run, tooltip, g) : perRunRows(run, tooltip, g);
    return el("div", { class: "gantt-scroll" }, el("div", { class: "gantt-axis-wrap" }, axisSvg(g.x, g.width, g.span, g.narrow, g.labelWidth)), rows);
  }

  // ------------------------------------------------------------------ run page: why

  function share(part, whole) {
    return whole ? ((100 * part) / whole).toFixed(1) + "%" : "–";
  }

  function causesTable(why) {
    const rows = why.causes.map((c) => [
      c.label,
      seconds(c.wall_seconds) + " (" + share(c.wall_seconds, why.wall_seconds) + ")",
      seconds(c.task_seconds),
      c.kind === "flow" ? "–" : String(c.task_runs),
    ]);
    return table("Where the wall time went, by cause", ["What bounded it", "Wall time", "Task time", "Task runs"], rows, "No time recorded yet.");
  }

  function holdersBlock(entry) {
    const capacity = entry.capacity;
    const used = (v) => (v === null || v === undefined ? "–" : v.toFixed(1) + " unit-s");
    const rows = [["this run's own task runs", used(entry.own), share(entry.own, capacity)]];
    if (entry.own > 0) rows.push(["  of which their bodies ran", used(entry.own_running), share(entry.own_running, capacity)]);
    for (const f of entry.flows) rows.push([el("span", {}, "flow run ", link("/runs/" + f.run_id, f.run_id.slice(0, 8), "why:" + f.run_id), " (" + f.flow + ")"), used(f.unit_seconds), share(f.unit_seconds, capacity)]);
    for (const o of entry.others) rows.push(["outside flows: " + o.holder, used(o.unit_seconds), share(o.unit_seconds, capacity)]);
    if (entry.free !== null) rows.push(["nobody (free: hand-off on its way, head needs more, paused)", used(entry.free), share(entry.free, capacity)]);
    const slots = entry.slots === null ? "no slots" : plural(entry.slots, "slot");
    return el("div", { class: "why-holders" },
      el("h3", { text: "Who held limit “" + entry.limit + "”" }),
      el("p", { class: "hint", text: "While this run waited on it (" + seconds(entry.waited_seconds) + " of wall time, " + slots + "), its units were held by:" }),
      table("Who held limit " + entry.limit + " while this run waited", ["Held by", "Units × seconds", "Share"], rows, "Nothing recorded."));
  }

  function whyBlock(why) {
    const nodes = [el("p", { id: "why-headline", class: "headline", text: why.headline || "Nothing waited: no cause stands out." })];
    const side = [];
    for (const entry of why.holders) side.push(holdersBlock(entry));
    if (why.estimates.length) {
      side.push(el("div", { class: "why-estimates" },
        el("h3", { text: "What would have helped" }),
        el("ul", {}, why.estimates.map((e) => el("li", { text: e.what + ": about " + seconds(e.seconds) }))),
        why.modelled_seconds === null ? null : el("p", { class: "hint", text: "Replayed from the recorded task durations; the replay of this run as recorded takes " + seconds(why.modelled_seconds) + " against " + seconds(why.wall_seconds) + " measured." })));
    }
    for (const note of why.notes) side.push(el("p", { class: "hint", text: note }));
    nodes.push(el("div", { class: "why-grid" }, el("div", { id: "why-causes" }, causesTable(why)), el("div", { class: "why-side" }, side)));
    return nodes;
  }

  // ------------------------------------------------------------------ run page: logs

  const LONG_LINES = 15; // a message or traceback of more lines starts collapsed
  const TRACEBACKS = 20; // task runs' tracebacks shown above the records

  function textLines(text) {
    return String(text).replace(/\s+$/, "").split("\n");
  }

  // Text of several lines, preformatted; a long one behind a summary line to open it.
  // Every piece of text goes in through textContent (el's "text"), never as markup.
  function textBlock(text, summary, cls, key, open) {
    const lines = textLines(text);
    const pre = el("pre", { class: cls, text: lines.join("\n") });
    if (lines.length <= LONG_LINES) return pre;
    return el("details", { class: "long-text", open: open.has(key) },
      el("summary", { "data-key": key }, el("span", { class: "summary-line", text: summary }),
        el("span", { class: "hint", text: " · " + plural(lines.length, "line") })),
      pre);
  }

  function lastLine(text) {
    const lines = textLines(text).filter((line) => line.trim());
    return lines.length ? lines[lines.length - 1].trim() : "";
  }

  // The tracebacks of the flow run and of its task runs that failed, [key, title, text]
  // (the first TRACEBACKS task runs'), and how many more task runs have one.
  function tracebacks(run, logs) {
    const found = [];
    if (logs.traceback) found.push(["tb:" + run.id, "Traceback of the flow run (" + run.state + ")", logs.traceback]);
    const failed = run.task_runs.filter((t) => t.traceback);
    for (const t of failed.slice(0, TRACEBACKS)) {
      found.push(["tb:" + t.id, "Traceback of task run " + t.task + " " + t.id.slice(0, 8) + " (" + t.state + ")", t.traceback]);
    }
    return { found, more: Math.max(0, failed.length - TRACEBACKS) };
  }

  function openKeys(node) {
    return new Set([...node.querySelectorAll("details[open] > summary")].map((s) => s.getAttribute("data-key")));
  }

  function runCell(r) {
    if (!r.task_run_id) return el("span", { text: "flow run" });
    return el("span", { title: "task run " + r.task_run_id }, (r.task || "task run") + " ", el("code", { text: r.task_run_id.slice(0, 8) }));
  }

  const LOG_HEADERS = ["Time (UTC)", "Level", "Run", "Message"];

  function logRow(r, open) {
    const level = String(r.level);
    const lines = textLines(r.message);
    const message = lines.length > 1
      ? textBlock(r.message, lines[0], "log-message", "log:" + r.seq, open)
      : el("span", { class: "log-message", text: r.message });
    const cells = [
      el("time", { datetime: r.timestamp, title: r.timestamp, text: datetime(r.timestamp) }),
      el("span", { class: "level level-" + level.toLowerCase(), text: level }),
      runCell(r),
      message,
    ];
    const classes = ["log-time", "log-level", "log-run", "log-text"];
    return el("tr", { "data-seq": r.seq }, cells.map((cell, i) => el("td", { class: classes[i], "data-label": LOG_HEADERS[i] }, cell)));
  }

  // The run's log records in order, in a box that scrolls. New records are appended (a
  // box scrolled to its end follows them); a running run's box opens at its end.
  function logView() {
    const tracebackSlot = el("div", { class: "tracebacks" });
    const countLine = el("p", { id: "log-count", class: "hint" });
    const records = el("div", { id: "log-records" });
    const rows = el("tbody", {});
    const box = el("div", { class: "logs-scroll", tabindex: 0, role: "region", "aria-label": "Log records" },
      el("table", { class: "responsive log-table" },
        el("caption", { class: "visually-hidden", text: "Log records of this flow run and its task runs, oldest first" }),
        el("thead", {}, el("tr", {}, LOG_HEADERS.map((h) => el("th", { scope: "col", text: h })))),
        rows));
    let shown = []; // the seq of each record shown, in order
    let tracebackText = null;

    function drawTracebacks({ found, more }, runId) {
      const signature = JSON.stringify([more, found.map(([key, title, text]) => [key, title, text.length])]);
      if (signature === tracebackText) return; // unchanged: keep what the reader opened
      tracebackText = signature;
      const open = openKeys(tracebackSlot);
      replaceKeepingFocus(tracebackSlot,
        found.map(([key, title, text]) =>
          el("div", { class: "traceback", "data-traceback": key.slice(3) },
            el("h3", { text: title }),
            textBlock(text, lastLine(text), "traceback-text", key, open))),
        more ? el("p", { class: "hint", text: "… and " + plural(more, "more task run") + " with a traceback; `sluice run show " + runId + "` prints them all." }) : null);
    }

    function drawRecords(logs, running) {
      const same = shown.length <= logs.length && shown.every((seq, i) => logs[i].seq === seq);
      const follow = box.isConnected && box.scrollHeight - box.scrollTop - box.clientHeight < 4;
      if (!same) {
        const open = openKeys(rows);
        const all = document.createDocumentFragment();
        for (const r of logs) all.append(logRow(r, open));
        rows.replaceChildren(all);
      } else if (logs.length > shown.length) {
        const fresh = document.createDocumentFragment();
        for (const r of logs.slice(shown.length)) fresh.append(logRow(r, new Set()));
        rows.append(fresh);
      }
      const first = !shown.length;
      shown = logs.map((r) => r.seq);
      countLine.textContent = logs.length
        ? plural(logs.length, "log record") + " of this flow run and its task runs, oldest first."
        : running ? "No log records yet." : "No log records.";
      if (logs.length && !box.isConnected) records.replaceChildren(box);
      if (!logs.length && box.isConnected) records.replaceChildren();
      if (logs.length && (follow || (first && running))) box.scrollTop = box.scrollHeight;
    }

    return {
      nodes: [tracebackSlot, countLine, records],
      draw(run, logs) {
        drawTracebacks(tracebacks(run, logs), run.id);
        drawRecords(logs.logs, !run.ended_at);
      },
    };
  }

  // ------------------------------------------------------------------ run page

  function taskRows(run, all) {
    const shown = all ? run.task_runs : run.task_runs.slice(0, TASK_ROWS);
    return shown.map((t) => [
      el("span", {}, el("code", { id: "task-" + t.id, text: t.id.slice(0, 12) }), " " + t.task),
      t.state,
      seconds(t.waited),
      seconds(t.ran),
      String(t.attempts),
      t.limits.join(", ") || "–",
      t.message || "",
    ]);
  }

  async function runPage() {
    const runId = body.dataset.run;
    await session();
    const tooltip = el("div", { class: "tooltip", role: "tooltip", hidden: true });
    document.body.append(tooltip, patterns());
    const facts = el("p", { class: "run-facts" });
    const whySlot = el("div", { class: "why" });
    const whyText = el("pre", { class: "why-text" });
    const chartSlot = el("div", { class: "gantt-wrap" });
    const modeButton = el("button", { type: "button", class: "small", "aria-pressed": "false" });
    const legend = el("ul", { class: "legend", "aria-label": "Legend" },
      Object.entries(KINDS).map(([kind, label]) => el("li", {}, swatch(kind), " " + label)));
    const ganttHint = el("p", { class: "hint" });
    const tasksSlot = el("div", {});
    const logPanel = logView();
    let allTasks = location.hash.startsWith("#task-");
    let grouped = null; // null: decided by the number of task runs
    let last = null;
    let endedSeen = 0; // refreshes that found the run ended
    content.replaceChildren(
      facts,
      section("why-heading", "Why it took this long", whySlot,
        el("details", {}, el("summary", { text: "As `sluice run why` prints it" }), whyText)),
      section("gantt-heading", "Task runs over time",
        el("div", { class: "gantt-tools" }, ganttHint, modeButton), legend, chartSlot),
      section("logs-heading", "Logs", ...logPanel.nodes),
      section("tasks-heading", "Task runs", tasksSlot)
    );
    const isGrouped = () => (grouped === null ? last.task_runs.length > GROUP_ABOVE : grouped);
    const draw = () => {
      if (!last) return;
      const many = isGrouped();
      modeButton.textContent = many ? "One row per task run" : "Group by task";
      modeButton.setAttribute("aria-pressed", String(many));
      ganttHint.textContent = many
        ? "One row per task: how many of its task runs were in each state over time (stacked). Hover or focus a row for the counts."
        : "Hover a bar, or focus it with Tab, for the limit and queue position.";
      replaceKeepingFocus(chartSlot, last.task_runs.length ? gantt(last, tooltip, chartSlot, many) : el("p", { class: "empty", text: "No task runs." }));
    };
    modeButton.addEventListener("click", () => {
      grouped = !isGrouped();
      draw();
    });
    onResize(draw);
    const drawTasks = () => {
      const more = !allTasks && last.task_runs.length > TASK_ROWS;
      replaceKeepingFocus(tasksSlot,
        table("Task runs of this flow run", ["Task run", "State", "Waited", "Ran", "Tries", "Limits", "Message"], taskRows(last, allTasks), "No task runs."),
        more ? el("button", { type: "button", class: "small", text: "Show all " + last.task_runs.length.toLocaleString("en") + " task runs", onclick: () => { allTasks = true; drawTasks(); } }) : null);
    };
    every(2000, async () => {
      const run = await api("/api/runs/" + encodeURIComponent(runId));
      last = run;
      facts.replaceChildren(
        el("span", { class: "state state-" + run.state.toLowerCase(), text: run.state + (run.message ? ": " + run.message : "") }),
        " · ", plural(run.task_runs.length, "task run"),
        " · started ", el("time", { datetime: run.started_at || run.created_at, text: datetime(run.started_at || run.created_at) }),
        " · ", run.ended_at ? "took " + seconds(run.duration) : "running",
        " · ", el("code", { text: run.id }));
      replaceKeepingFocus(whySlot, ...whyBlock(run.why));
      whyText.textContent = run.why_text;
      draw();
      drawTasks();
      logPanel.draw(run, await api("/api/runs/" + encodeURIComponent(run.id) + "/logs"));
      stamp(run.ended_at ? "Ended " + datetime(run.ended_at) : "Running · updated " + clock(new Date()));
      // Stop refreshing once the run has ended, after one more look: a flow logs its
      // end ("flow run ... Failed") just after its end is written.
      if (run.ended_at) endedSeen += 1;
      return endedSeen < 2;
    });
  }

  return { runsPage, runPage };
})();
