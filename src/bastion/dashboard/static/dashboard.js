// Live refresh of a server-rendered region: every element with data-src is replaced by a
// fresh rendering of that URL every 5 s (same origin, session cookie). Nothing else runs
// here; without JavaScript the page is complete, only not live.
"use strict";
(function () {
  const PERIOD_MS = 5000;
  const status = document.getElementById("live-status");
  async function refresh(el) {
    try {
      const res = await fetch(el.dataset.src, { credentials: "same-origin", redirect: "manual" });
      if (res.status !== 200) {
        if (status) status.textContent = "live updates stopped (" + (res.status || "logged out") + ")";
        return false;
      }
      el.innerHTML = await res.text();
      if (status) status.textContent = "updated " + new Date().toLocaleTimeString();
      return true;
    } catch (e) {
      if (status) status.textContent = "live updates paused: " + e.message;
      return true;
    }
  }
  for (const el of document.querySelectorAll("[data-src]")) {
    const timer = setInterval(async () => {
      if (!(await refresh(el))) clearInterval(timer);
    }, PERIOD_MS);
  }
})();
