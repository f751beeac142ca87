// swarmlearn dashboard: live updates. The server renders every section; this script only
// listens to /events (server-sent events) and swaps in the sections that changed, so the
// page never reloads. If the dashboard server goes away, it says so and EventSource retries.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const query = new URLSearchParams(location.search);
  query.set("page", page);
  const conn = document.getElementById("conn");
  let updates = 0;
  const source = new EventSource("/events?" + query.toString());
  source.addEventListener("update", function (event) {
    const parts = JSON.parse(event.data);
    for (const id of Object.keys(parts)) {
      const element = document.getElementById(id);
      if (element !== null) {
        element.innerHTML = parts[id];
      }
    }
    updates += 1;
    document.body.dataset.updates = String(updates);
  });
  source.addEventListener("open", function () {
    conn.textContent = "live";
    conn.className = "live";
  });
  source.addEventListener("error", function () {
    conn.textContent = "lost the dashboard server (is `swarmlearn dashboard` still running?), retrying";
    conn.className = "lost";
  });
})();
