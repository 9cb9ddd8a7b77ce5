// Sluice dashboard: starts the page this document is. Hand-written, no dependencies, no
// build step; core.js holds the shared helpers, limits.js and runs.js the pages. Every
// chart is inline SVG drawn there; every colour has a pattern or text beside it.
"use strict";

(function () {
  const { body, content, el, session, showError } = window.Sluice;
  const pages = {
    limits: window.SluiceLimits.limitsPage,
    limit: window.SluiceLimits.limitPage,
    runs: window.SluiceRuns.runsPage,
    run: window.SluiceRuns.runPage,
  };
  const start = pages[body.dataset.page];
  if (start) {
    start().catch((e) => showError(e.message));
  } else if (body.dataset.message) {
    content.replaceChildren(el("p", { text: body.dataset.message }), el("p", {}, el("a", { href: "/", text: "Back to the limits" })));
    session().catch(() => {});
  }
})();
