/* The submit page: the chosen model's parameter form, built from GET /models/{id} (types,
   defaults, ranges, allowed values), then the upload (POST /uploads; without that
   resource, the image goes with the job in one multipart POST /jobs) and the job
   (POST /jobs with IMAGE=upload:<id>, PHASE=RUN). Empty fields are not sent: the service
   applies the model's defaults. */
"use strict";
(function () {
  var form = document.getElementById("submit");
  if (!form) { return; }
  var modelSelect = document.getElementById("model");
  var versionSelect = document.getElementById("model_version");
  var precisionSelect = document.getElementById("precision");
  var params = document.getElementById("params");
  var paramsStatus = document.getElementById("params-status");
  var region = document.getElementById("region");
  var regionFields = document.getElementById("region-fields");
  var advanced = document.getElementById("advanced-fields");
  var status = document.getElementById("submit-status");
  var errorBox = document.getElementById("submit-error");
  var button = document.getElementById("submit-button");
  var fileInput = document.getElementById("image");
  var description = document.getElementById("model-description");
  var modelLink = document.getElementById("model-link");
  /* Set by the form itself, not by the parameter form. */
  var HANDLED = ["image", "model", "model_version", "precision"];
  var REGION = ["ra", "dec", "width", "height"];
  var native = (form.getAttribute("data-native") || "").split(",");

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function hint(p) {
    var parts = [p.description || ""];
    if (p.minimum !== undefined || p.maximum !== undefined) {
      parts.push("Range: " + (p.minimum !== undefined ? p.minimum : "…") + " to " +
                 (p.maximum !== undefined ? p.maximum : "…") + (p.unit ? " " + p.unit : "") + ".");
    }
    if (p.default !== undefined && p.default !== null) { parts.push("Default: " + p.default + "."); }
    return parts.join(" ");
  }

  function field(p) {
    var id = "p-" + p.name;
    var box = el("div", { "class": "field" });
    var label = el("label", { "for": id }, p.name.toUpperCase() + (p.unit ? " (" + p.unit + ")" : ""));
    box.appendChild(label);
    var input;
    var hasDefault = p.default !== undefined && p.default !== null;
    if (p.type === "bool") {
      input = el("select", { id: id, name: p.name.toUpperCase() });
      input.appendChild(el("option", { value: "" }, hasDefault ? "default (" + p.default + ")" : "default"));
      input.appendChild(el("option", { value: "true" }, "true"));
      input.appendChild(el("option", { value: "false" }, "false"));
    } else if (p.allowed) {
      input = el("select", { id: id, name: p.name.toUpperCase() });
      input.appendChild(el("option", { value: "" }, hasDefault ? "default (" + p.default + ")" : "default"));
      p.allowed.forEach(function (a) { input.appendChild(el("option", { value: a }, a)); });
    } else if (p.type === "int" || p.type === "float") {
      input = el("input", { id: id, name: p.name.toUpperCase(), type: "number",
                            step: p.type === "int" ? "1" : "any", inputmode: "decimal" });
      if (p.minimum !== undefined) { input.setAttribute("min", p.minimum); }
      if (p.maximum !== undefined) { input.setAttribute("max", p.maximum); }
      if (hasDefault) { input.setAttribute("placeholder", p.default); }
    } else {
      input = el("input", { id: id, name: p.name.toUpperCase(), type: "text", maxlength: "1024" });
      if (hasDefault) { input.setAttribute("placeholder", p.default); }
      else if (p.type === "angle-or-pixels") { input.setAttribute("placeholder", "e.g. 512 or 3 arcmin"); }
    }
    if (p.required) { input.required = true; }
    input.setAttribute("aria-describedby", id + "-help");
    box.appendChild(input);
    box.appendChild(el("p", { "class": "hint", id: id + "-help" }, hint(p)));
    return box;
  }

  function fill(select, values, first) {
    var keep = select.value;
    select.textContent = "";
    select.appendChild(el("option", { value: "" }, first));
    values.forEach(function (v) { select.appendChild(el("option", { value: v }, v)); });
    if (values.indexOf(keep) !== -1) { select.value = keep; }
  }

  function loadModel(keepVersion) {
    var id = modelSelect.value;
    var option = modelSelect.selectedOptions[0];
    if (!keepVersion) {
      var versions = (option && option.getAttribute("data-versions") || "").split(",").filter(Boolean);
      fill(versionSelect, versions, "newest");
    }
    var url = "/models/" + encodeURIComponent(id) +
              (versionSelect.value ? "?version=" + encodeURIComponent(versionSelect.value) : "");
    paramsStatus.textContent = "Loading the model's parameters…";
    modelLink.setAttribute("href", "/ui/models/" + encodeURIComponent(id) +
                           (versionSelect.value ? "?version=" + encodeURIComponent(versionSelect.value) : ""));
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : r.text().then(function (t) { throw new Error(OTF.errorText(r.status, t)); }); })
      .then(function (model) {
        description.textContent = model.description || "";
        fill(precisionSelect, model.precisions || [], (model.precisions && model.precisions.length) ? "default (" + model.precisions[0] + ")" : "no choice");
        precisionSelect.disabled = !(model.precisions && model.precisions.length > 1);
        params.textContent = "";
        regionFields.textContent = "";
        advanced.textContent = "";
        var own = 0, inRegion = 0;
        (model.parameters || []).forEach(function (p) {
          if (HANDLED.indexOf(p.name) !== -1 || p.type === "file") { return; }
          if (REGION.indexOf(p.name) !== -1) { regionFields.appendChild(field(p)); inRegion++; }
          else if (native.indexOf(p.name) !== -1) { advanced.appendChild(field(p)); }
          else { params.appendChild(field(p)); own++; }
        });
        region.hidden = inRegion === 0;
        paramsStatus.textContent = own ? "Leave a field empty for its default." : "This model takes no parameters of its own.";
      })
      .catch(function (err) {
        paramsStatus.textContent = "The model's parameters could not be loaded: " + (err.message || err);
      });
  }

  /* POST with upload progress (XMLHttpRequest: fetch reports none); resolves with the
     request once done, whatever its status. Redirects are followed: responseURL is the
     job's URL after a 303. */
  function post(url, body, what) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRF-Token", OTF.csrf());
      xhr.withCredentials = true;
      if (xhr.upload && what) {
        xhr.upload.addEventListener("progress", function (e) {
          if (e.lengthComputable) { status.textContent = what + " " + Math.round(100 * e.loaded / e.total) + " %"; }
        });
      }
      xhr.addEventListener("load", function () { resolve(xhr); });
      xhr.addEventListener("error", function () { reject(new Error("the service could not be reached")); });
      xhr.send(body);
    });
  }

  function jobFields() {
    return OTF.fields(form, function (name, value) {
      return name !== "IMAGE" && value.trim() !== "";
    });
  }

  function done(xhr) {
    if (xhr.status >= 200 && xhr.status < 300) {
      var id = OTF.jobIdOf(xhr.responseURL);
      if (id) { status.textContent = "Job " + id + " created."; location.href = "/ui/jobs/" + encodeURIComponent(id); return; }
    }
    throw new Error(OTF.errorText(xhr.status, xhr.responseText));
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    OTF.show(errorBox, "");
    var file = fileInput.files && fileInput.files[0];
    if (!file) { OTF.show(errorBox, "Choose a FITS image to upload."); fileInput.focus(); return; }
    var limit = Number(form.getAttribute("data-max-bytes") || 0);
    if (limit && file.size > limit) {
      OTF.show(errorBox, "This file is larger than the service's upload limit.");
      return;
    }
    button.disabled = true;
    var upload = new FormData();
    upload.append("file", file, file.name);
    post("/uploads", upload, "Uploading")
      .then(function (xhr) {
        if (xhr.status === 404 || xhr.status === 405) {
          /* a service without /uploads: the image goes with the job */
          var whole = new FormData();
          jobFields().forEach(function (value, name) { whole.append(name, value); });
          whole.append("IMAGE", file, file.name);
          return post("/jobs", whole, "Uploading").then(done);
        }
        if (xhr.status !== 200 && xhr.status !== 201) {
          throw new Error(OTF.errorText(xhr.status, xhr.responseText));
        }
        var record = JSON.parse(xhr.responseText);
        status.textContent = "Uploaded; creating the job…";
        var body = jobFields();
        body.set("IMAGE", "upload:" + record.upload_id);
        return post("/jobs", body, null).then(done);
      })
      .catch(function (err) {
        OTF.show(errorBox, err.message || String(err));
        status.textContent = "";
        button.disabled = false;
      });
  });

  modelSelect.addEventListener("change", function () { loadModel(false); });
  versionSelect.addEventListener("change", function () { loadModel(true); });
  loadModel(false);
})();
