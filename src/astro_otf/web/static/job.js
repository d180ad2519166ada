/* A job's page, live: progress and phase from the event stream (or a blocking WAIT when
   there is none), the log's tail, and the abort / delete / run / rerun forms sent with the
   CSRF header. A job that reaches a final phase reloads the page to show its results. */
"use strict";
(function () {
  var root = document.getElementById("job");
  if (!root) { return; }
  var jobId = root.getAttribute("data-job");
  var phase = root.getAttribute("data-phase");
  var base = "/jobs/" + encodeURIComponent(jobId);
  var badge = document.getElementById("phase");
  var bar = document.getElementById("progress");
  var barText = document.getElementById("progress-text");
  var logBox = document.getElementById("log");
  var message = document.getElementById("action-message");
  var lastLog = 0;

  function isFinal(p) { return OTF.FINAL.indexOf(p) !== -1; }

  function loadLog() {
    lastLog = Date.now();
    fetch(base + "/log?tail=50", { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 404) { return "No log for this job (yet)."; }
        return r.text().then(function (t) { return r.ok ? (t || "The log is empty.") : OTF.errorText(r.status, t); });
      })
      .then(function (text) {
        var atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
        logBox.textContent = text;
        if (atEnd) { logBox.scrollTop = logBox.scrollHeight; }
      })
      .catch(function () { logBox.textContent = "The log could not be read."; });
  }

  function setPhase(p) {
    if (!p || p === phase) { return; }
    var was = phase;
    phase = p;
    badge.textContent = p;
    badge.className = "phase big phase-" + p.toLowerCase();
    root.setAttribute("data-phase", p);
    if (isFinal(p) && !isFinal(was)) {
      location.reload();
    } else if (was === "PENDING") {
      location.reload(); /* the actions change */
    }
  }

  function setProgress(progress) {
    if (!bar) { return; }
    if (progress && typeof progress.fraction === "number" && progress.stage !== "queued") {
      bar.value = Math.round(100 * progress.fraction);
    } else {
      bar.removeAttribute("value");
    }
    barText.textContent = OTF.progressText(phase, progress);
    if (Date.now() - lastLog > 5000) { loadLog(); }
  }

  function follow() {
    if (isFinal(phase)) { return; }
    if (window.EventSource) {
      var source = new EventSource("/jobs/events?job=" + encodeURIComponent(jobId));
      var opened = false;
      /* on every (re)connection, once the stream is open: read the job, so that a change
         between the page's rendering (or a dropped connection) and the stream is not missed */
      source.addEventListener("open", function () { opened = true; check(); });
      source.addEventListener("phase", function (e) {
        var d = JSON.parse(e.data);
        if (d.progress !== undefined) { setProgress(d.progress); }
        setPhase(d.phase);
      });
      source.addEventListener("progress", function (e) {
        var d = JSON.parse(e.data);
        setProgress(d.progress);
        if (d.phase) { setPhase(d.phase); }
      });
      source.addEventListener("deleted", function () { location.href = "/"; });
      source.addEventListener("reset", function () { check(); });
      source.addEventListener("error", function () {
        if (source.readyState === EventSource.CLOSED) { source.close(); if (!opened) { waitLoop(); } }
      });
      window.addEventListener("pagehide", function () { source.close(); });
    } else {
      waitLoop();
    }
  }

  function check() {
    return fetch(base, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (doc) {
        if (!doc) { return null; }
        var info = doc.jobInfo || {};
        if (info.progress !== undefined) { setProgress(info.progress); }
        setPhase(doc.phase);
        return doc;
      });
  }

  /* Without the event stream: UWS blocking WAIT, one request per change. */
  function waitLoop() {
    if (isFinal(phase)) { return; }
    fetch(base + "?WAIT=30", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (doc) {
        var info = doc.jobInfo || {};
        setProgress(info.progress || null);
        setPhase(doc.phase);
        setTimeout(waitLoop, 500);
      })
      .catch(function () { setTimeout(waitLoop, 5000); });
  }

  function keepChanged(name, value) {
    var input = document.querySelector('#rerun [name="' + CSS.escape(name) + '"]');
    if (!input || !input.hasAttribute("data-original")) { return true; }
    return value !== input.getAttribute("data-original");
  }

  Array.prototype.forEach.call(document.querySelectorAll("form[data-action]"), function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var action = form.getAttribute("data-action");
      var question = form.getAttribute("data-confirm");
      if (question && !window.confirm(question)) { return; }
      var button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; }
      OTF.show(message, "");
      var body = OTF.fields(form, action === "rerun" ? keepChanged : null);
      OTF.send(form.getAttribute("action"), { method: "POST", body: body })
        .then(function (r) {
          if (!r.ok) {
            return r.text().then(function (t) { throw new Error(OTF.errorText(r.status, t)); });
          }
          if (action === "delete") { location.href = "/"; return; }
          if (action === "rerun") {
            var id = OTF.jobIdOf(r.url);
            location.href = id ? "/ui/jobs/" + encodeURIComponent(id) : "/";
            return;
          }
          location.reload();
        })
        .catch(function (err) {
          OTF.show(message, err.message || String(err));
          if (button) { button.disabled = false; }
        });
    });
  });

  var refreshButton = document.getElementById("log-refresh");
  if (refreshButton) { refreshButton.addEventListener("click", loadLog); }
  loadLog();
  follow();
})();
