// Sluice dashboard: the limits page and a limit's page (its chart, head of line, wait
// percentiles, holders, waiters, changes and admin actions).
"use strict";

window.SluiceLimits = (function () {
  const {
    body, content, el, svg, seconds, rate, delivered, totalsText, datetime, clock, timeOfDay,
    api, showError, stamp, every, replaceKeepingFocus, table, gauge, plural, tokenText, session,
    onResize, chartWidth, section,
  } = window.Sluice;

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
    async function act(action, question, payload, after) {
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
        if (after) return after();
      } catch (e) {
        result.textContent = "Failed: " + e.message;
        result.className = "result failed";
      }
      await refresh();
    }
    const forceBox = el("input", { type: "checkbox", id: "delete-force" });
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
        el("button", { type: "button", class: "danger", text: "Reset…", onclick: () => act("reset", "Reset limit “" + name + "”? Every holder is released (their code gets LeaseLost) and the rate bucket refills.") }),
        el("button", { type: "button", class: "danger", text: "Delete…", onclick: () => {
          const force = forceBox.checked;
          const question = "Delete limit “" + name + "”?" + (force
            ? " Its holders' leases are revoked (their code gets LeaseLost)."
            : " Refused while anyone holds it (tick “even while held” to revoke).");
          act("delete", question, { force }, () => { window.location.href = "/"; });
        } }),
        el("label", { class: "check" }, forceBox, " even while held")),
      form
    );
  }

  // ------------------------------------------------------------------ limit page: chart

  const WINDOWS = [[600, "10 min"], [3600, "1 h"], [21600, "6 h"], [86400, "24 h"]];

  // A step line through per-slice values (null: a gap), as an SVG path.
  function stepPath(values, x, y, since, width) {
    let d = "";
    let drawing = false;
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        drawing = false;
        return;
      }
      const x0 = x(since + i * width).toFixed(1);
      const x1 = x(since + (i + 1) * width).toFixed(1);
      const yv = y(v).toFixed(1);
      d += (drawing ? " V" + yv + " H" + x1 : " M" + x0 + "," + yv + " H" + x1);
      drawing = true;
    });
    return d.trim();
  }

  function ticks(top) {
    return [0, Math.ceil(top / 2), top].filter((v, i, all) => all.indexOf(v) === i);
  }

  function panel(graph, top, y, left, right, label) {
    for (const v of ticks(top)) {
      graph.append(svg("g", { class: "tick" },
        svg("line", { x1: left, x2: right, y1: y(v), y2: y(v) }),
        svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", text: String(v) })));
    }
    graph.append(svg("text", { class: "axis panel-label", x: left + 4, y: y(top) - 2, text: label }));
  }

  function timelineChart(t, holder) {
    const width = chartWidth(holder, 600, 1100);
    const narrow = width < 520;
    const pad = { left: 34, right: 8 };
    const unitsTop = 16, unitsHeight = narrow ? 110 : 150, gap = 26, waitHeight = narrow ? 70 : 90;
    const waitTop = unitsTop + unitsHeight + gap;
    const height = waitTop + waitHeight + 24;
    const span = Math.max(t.until - t.since, 1);
    const x = (at) => pad.left + ((at - t.since) / span) * (width - pad.left - pad.right);
    const slotValues = t.slots.map((s) => s[1]).filter((v) => v !== null);
    const unitMax = Math.max(1, ...t.in_use, ...slotValues);
    const sampled = t.waiting_sampled.filter((v) => v !== null);
    const waitMax = Math.max(1, ...t.waiting_runs, ...sampled);
    const yUnits = (v) => unitsTop + unitsHeight - (v / unitMax) * unitsHeight;
    const yWait = (v) => waitTop + waitHeight - (v / waitMax) * waitHeight;
    const most = Math.max(0, ...t.in_use);
    const mostWaiting = Math.max(0, ...t.waiting_runs, ...sampled);
    const changes = t.slots.length - 1;
    const summary =
      "Over the last " + seconds(span) + ": at most " + plural(most, "unit") + " in use at once" +
      (slotValues.length ? ", of " + slotValues[slotValues.length - 1] + " slots" + (changes ? " (changed " + plural(changes, "time") + ")" : "") : "") +
      "; at most " + mostWaiting + " waiting at once.";
    const graph = svg("svg", { class: "timeline", width, height, viewBox: "0 0 " + width + " " + height, role: "img", "aria-label": summary });
    panel(graph, unitMax, yUnits, pad.left, width - pad.right, "units in use");
    panel(graph, waitMax, yWait, pad.left, width - pad.right, "waiters");
    const right = t.until;
    const inUse = stepPath(t.in_use, x, yUnits, t.since, t.bin_seconds);
    if (inUse) {
      graph.append(svg("path", { class: "area-in-use", d: inUse + " V" + yUnits(0).toFixed(1) + " H" + x(t.since).toFixed(1) + " Z" }));
      graph.append(svg("path", { class: "line-in-use", d: inUse }));
    }
    t.slots.forEach(([at, slots], i) => {
      if (slots === null) return;
      const end = i + 1 < t.slots.length ? t.slots[i + 1][0] : right;
      graph.append(svg("line", { class: "slots-line", x1: x(at), x2: x(end), y1: yUnits(slots), y2: yUnits(slots) }));
      if (i > 0) graph.append(svg("circle", { class: "slots-change", cx: x(at), cy: yUnits(slots), r: 3 }, svg("title", { text: "slots " + slots + " from " + datetime(at) })));
    });
    const path = (cls, d) => (d ? graph.append(svg("path", { class: cls, d })) : null);
    path("line-waiting-runs", stepPath(t.waiting_runs, x, yWait, t.since, t.bin_seconds));
    path("line-waiting", stepPath(t.waiting_sampled, x, yWait, t.since, t.bin_seconds));
    if (t.sampled_since !== null && t.sampled_since > t.since + t.bin_seconds) {
      const sx = x(t.sampled_since);
      graph.append(svg("line", { class: "sampled-since", x1: sx, x2: sx, y1: waitTop, y2: waitTop + waitHeight }));
    }
    const labels = narrow ? [0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1];
    for (const f of labels) {
      graph.append(svg("text", {
        class: "axis", x: x(t.since + f * span), y: height - 6,
        "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle",
        text: timeOfDay(t.since + f * span),
      }));
    }
    const key = (cls, text) => [el("span", { class: "key " + cls, "aria-hidden": "true" }), " " + text + "  "];
    return el("figure", { class: "chart" }, graph,
      el("figcaption", {},
        key("key-in-use", "units in use (solid, most at once per slice)"),
        key("key-slots", "slots (dotted; dots mark changes)"),
        key("key-waiting", "waiters, sampled (solid)"),
        key("key-waiting-runs", "flow task runs waiting (dashed)"),
        el("p", { class: "hint", text:
          "Units in use are exact, from the store's record of held units, and slots follow the record of changes: both survive a restart of the dashboard. " +
          "Flow task runs waiting come from the run history; other waiters are only in this dashboard's samples" +
          (t.sampled_since !== null ? ", taken since " + datetime(t.sampled_since) + " (the grey line)." : " (none yet).") }),
        el("p", { class: "visually-hidden", text: summary })));
  }

  // ------------------------------------------------------------------ limit page

  function percentilesText(list, grants) {
    if (!list.length) return "– (no grants yet)";
    const bound = (p) => (p.upto === null ? "> " + seconds(p.above) : "≤ " + seconds(p.upto));
    return list.map((p) => "p" + p.percentile + " " + bound(p)).join(" · ") +
      " (of " + grants.toLocaleString("en") + " grants, by histogram bucket)";
  }

  function auditTable(name, records) {
    return table(
      "Changes to " + name + ", newest first",
      ["When (UTC)", "Action", "Who", "What"],
      records.map((r) => [datetime(r.at), r.action, r.who.text, r.what]),
      "No changes recorded (update, enable, disable, reset and delete are)."
    );
  }

  async function limitPage() {
    const name = body.dataset.name;
    const path = "/api/limits/" + encodeURIComponent(name).replace(/%2F/g, "/");
    const info = await session();
    const head = el("p", { id: "head-of-line", class: "head-of-line", "aria-live": "polite" });
    const summary = el("div", {});
    let windowSeconds = 600;
    let lastTimeline = null;
    const chartSlot = el("div", { class: "chart-slot" });
    const picker = el("select", { id: "window", "aria-label": "Time window" },
      WINDOWS.map(([value, label]) => el("option", { value, text: "last " + label, selected: value === windowSeconds })));
    const chartBox = section("chart-heading", "In use and waiting",
      el("div", { class: "chart-tools" }, el("label", { for: "window", text: "Show " }), picker), chartSlot);
    const holdersSlot = el("div", { id: "holders" });
    const waitersSlot = el("div", { id: "waiters" });
    const auditSlot = el("div", { id: "audit" });
    const result = el("p", { class: "result", role: "status", "aria-live": "polite" });
    const sections = [
      head, summary, chartBox,
      section("holders-heading", "Holders", holdersSlot),
      section("waiters-heading", "Waiters", waitersSlot),
      section("audit-heading", "Changes", auditSlot),
    ];
    let refreshNow = async () => {};
    if (info.admin) sections.push(adminPanel(name, result, () => refreshNow()), result);
    content.replaceChildren(...sections);
    const drawChart = () => {
      if (lastTimeline) chartSlot.replaceChildren(timelineChart(lastTimeline, chartSlot));
    };
    onResize(drawChart);

    async function refresh() {
      const l = await api(path + "?window=" + windowSeconds);
      head.textContent = "Head of line: " + l.head.text + ".";
      head.className = "head-of-line hol-" + l.head.kind;
      replaceKeepingFocus(
        summary,
        el("dl", { class: "facts" },
          el("dt", { text: "In use" }), el("dd", {}, gauge(l.in_use, l.slots, l.active)),
          el("dt", { text: "Rate" }), el("dd", { text: l.rate === null ? "none" : rate(l.rate) + ", burst " + l.burst }),
          el("dt", { text: "Next token" }), el("dd", { text: tokenText(l.next_token_in) }),
          el("dt", { text: "Waiters" }), el("dd", { text: String(l.waiters.reduce((n, w) => n + w.count, 0)) }),
          el("dt", { text: "Waits" }), el("dd", { id: "wait-percentiles", text: percentilesText(l.wait_percentiles, l.totals.grants) }),
          el("dt", { text: "Granted" }), el("dd", { text: totalsText(l.totals) }),
          el("dt", { text: "Delivered" }), el("dd", { text: l.delivered_rate === null ? "– (measured over the last minute)" : delivered(l.delivered_rate) + " over the last minute" + (l.rate === null ? "" : ", of " + rate(l.rate) + " configured") }),
          el("dt", { text: "Timed out" }), el("dd", { text: l.totals.timeouts.toLocaleString("en") }),
          el("dt", { text: "Expired leases reclaimed" }), el("dd", { text: l.totals.expired_leases_reclaimed.toLocaleString("en") }),
          el("dt", { text: "Active" }), el("dd", {}, el("span", { class: l.active ? "badge on" : "badge off", text: l.active ? "active" : "disabled: admits everyone" })),
          el("dt", { text: "Lease TTL" }), el("dd", { text: seconds(l.lease_ttl) }))
      );
      lastTimeline = l.timeline;
      drawChart();
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
      replaceKeepingFocus(auditSlot, auditTable(name, l.audit));
      stamp(plural(l.holders.length, "holder") + ", " + plural(l.waiters.length, "waiter") + " · updated " + clock(l.sampled_at));
    }
    picker.addEventListener("change", () => {
      windowSeconds = Number(picker.value);
      refresh().catch((e) => showError(e.message));
    });
    refreshNow = refresh;
    every(info.interval * 1000, refresh);
  }

  return { limitsPage, limitPage };
})();
