/* The job list, live: the service's event stream (/jobs/events) says when a job changes;
   a phase change or a reset reloads the rows (rendered by the server, /ui/job-rows), a
   progress event updates its row in place. Without the stream, the rows are polled. */
"use strict";
(function () {
  var body = document.getElementById("job-rows");
  var state = document.querySelector("[data-live-state]");
  if (!body) { return; }
  var query = body.getAttribute("data-query") || "";
  var timer = null;
  var polling = null;

  function setState(text) { if (state) { state.textContent = text; } }

  function refresh() {
    fetch("/ui/job-rows" + (query ? "?" + query : ""), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) { body.innerHTML = html; })
      .catch(function () { setState("Live updates: the list could not be reloaded."); });
  }

  function soon() {
    if (timer) { return; }
    timer = setTimeout(function () { timer = null; refresh(); }, 250);
  }

  function progress(data) {
    var row = body.querySelector('tr[data-job="' + CSS.escape(data.job_id || "") + '"]');
    if (!row) { soon(); return; }
    var cell = row.querySelector("[data-progress]");
    if (!cell) { return; }
    cell.textContent = "";
    var p = data.progress;
    if (p && typeof p.fraction === "number" && p.stage !== "queued") {
      var pc = Math.round(100 * p.fraction);
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = pc;
      bar.setAttribute("aria-label", "Progress of " + data.job_id);
      cell.appendChild(bar);
      cell.appendChild(document.createTextNode(" " + pc + " %"));
    } else if (p && p.stage === "queued" && p.position) {
      cell.textContent = "#" + p.position + " of " + p.of + " in queue";
    }
  }

  function poll() {
    if (polling) { return; }
    setState("Live updates: checking every 10 s.");
    polling = setInterval(refresh, 10000);
  }

  if (!window.EventSource) { poll(); return; }
  var source = new EventSource("/jobs/events");
  source.addEventListener("open", function () { setState("Live updates: on."); });
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED) { poll(); }
    else { setState("Live updates: reconnecting…"); }
  });
  ["phase", "deleted", "reset"].forEach(function (kind) {
    source.addEventListener(kind, soon);
  });
  source.addEventListener("progress", function (event) {
    try { progress(JSON.parse(event.data)); } catch (e) { soon(); }
  });
  window.addEventListener("pagehide", function () { source.close(); });
})();
