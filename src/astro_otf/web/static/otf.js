/* What every page's script shares: the CSRF token, requests that carry it, small helpers.
   Plain browser JavaScript, no build step. */
"use strict";
window.OTF = (function () {
  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  /* fetch() with the CSRF header and the session cookie; redirects are followed, so
     response.url is where a 303 pointed (a job's URL). */
  function send(url, options) {
    options = options || {};
    var headers = new Headers(options.headers || {});
    headers.set("X-CSRF-Token", csrf());
    options.headers = headers;
    options.credentials = "same-origin";
    return fetch(url, options);
  }

  /* A form's fields as a urlencoded body, without the csrf_token field (sent as a header). */
  function fields(form, keep) {
    var body = new URLSearchParams();
    new FormData(form).forEach(function (value, name) {
      if (name === "csrf_token" || typeof value !== "string") { return; }
      if (keep && !keep(name, value)) { return; }
      body.append(name, value);
    });
    return body;
  }

  /* The job id at the end of a job's URL (…/jobs/<id>), or null. */
  function jobIdOf(url) {
    var match = /\/jobs\/([^\/?#]+)\/?(?:[?#].*)?$/.exec(url || "");
    return match ? decodeURIComponent(match[1]) : null;
  }

  function errorText(status, text) {
    text = (text || "").trim();
    if (text.length > 600) { text = text.slice(0, 600) + "…"; }
    return "The service answered " + status + (text ? ": " + text : ".");
  }

  function show(el, message) {
    if (!el) { return; }
    el.textContent = message;
    el.hidden = !message;
  }

  var FINAL = ["COMPLETED", "ERROR", "ABORTED", "ARCHIVED"];

  function progressText(phase, progress) {
    if (!progress) { return phase ? phase.charAt(0) + phase.slice(1).toLowerCase() : ""; }
    var text;
    if (progress.stage === "queued") {
      text = "Queued" + (progress.position ? ": number " + progress.position + " of " + progress.of : "");
    } else {
      var stage = String(progress.stage || "running");
      text = stage.charAt(0).toUpperCase() + stage.slice(1);
      if (progress.tiles_total) { text += ": " + progress.tiles_done + " of " + progress.tiles_total + " tiles"; }
      if (typeof progress.fraction === "number") { text += " (" + Math.round(100 * progress.fraction) + " %)"; }
    }
    if (progress.eta) { text += "; expected to end " + String(progress.eta).replace("T", " ").slice(0, 19) + " UTC"; }
    return text;
  }

  return { csrf: csrf, send: send, fields: fields, jobIdOf: jobIdOf, errorText: errorText,
           show: show, FINAL: FINAL, progressText: progressText };
})();
