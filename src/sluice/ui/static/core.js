// Sluice dashboard, shared helpers: elements, the JSON API, refreshing, tables, units
// and times. Hand-written, no dependencies, no build step; limits.js and runs.js draw
// the pages, app.js starts the one this document is.
"use strict";

window.Sluice = (function () {
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

  // Times are shown in UTC, ISO 8601 with a Z, to the second, as the CLI prints them
  // (docs/cli.md, "Times"): the same instant reads the same for everyone.
  function toDate(value) {
    if (value === null || value === undefined || value === "") return null;
    return value instanceof Date ? value : typeof value === "number" ? new Date(value * 1000) : new Date(value);
  }

  function datetime(value) {
    const date = toDate(value);
    return date ? date.toISOString().replace(/\.\d{3}Z$/, "Z") : "–";
  }

  function clock(value) {
    const date = toDate(value);
    return date ? datetime(date).slice(11) : "–";
  }

  function timeOfDay(value) {
    // 12:03Z, for chart axes
    const date = toDate(value);
    return date ? datetime(date).slice(11, 16) + "Z" : "–";
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
  // A null or undefined child is left out (replaceChildren would show it as "null").
  function replaceKeepingFocus(parent, ...children) {
    const focused = document.activeElement;
    const key = focused && parent.contains(focused) ? focused.getAttribute("data-key") : null;
    parent.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined));
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

  // ------------------------------------------------------------------ resizing

  // Charts are drawn for the width they have: redraw them when it changes.
  const redrawers = [];
  let lastWidth = content ? content.clientWidth : 0;
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      const width = content.clientWidth;
      if (width === lastWidth) return;
      lastWidth = width;
      for (const redraw of redrawers) redraw();
    }, 120);
  });

  function onResize(redraw) {
    redrawers.push(redraw);
  }

  function chartWidth(node, fallback, most) {
    // The width a chart may take in its container: all of it, up to `most`.
    const width = (node && node.clientWidth) || content.clientWidth || fallback;
    return Math.max(200, Math.min(width, most || 1150));
  }

  function section(id, heading, ...children) {
    return el("section", { "aria-labelledby": id }, el("h2", { id, text: heading }), ...children);
  }

  function link(href, text, key) {
    return el("a", { href, "data-key": key || null, text });
  }

  return {
    TOKEN_HEADER, SVG_NS, body, content, updated, errorBox, modeBox, token,
    el, svg, setAttrs, append, seconds, rate, delivered, totalsText, datetime, clock, timeOfDay,
    api, showError, stamp, every, replaceKeepingFocus, table, gauge, plural, tokenText, session,
    onResize, chartWidth, section, link,
  };
})();
