// The content SF's CMS page: sign in with a token, upload with tus (resumable, with progress),
// search the catalogue, read an asset's quality report, publish it. Everything goes through
// the SF's own /v1 API with the token in the Authorization header (kept in sessionStorage).
"use strict";

const state = { token: sessionStorage.getItem("flame-cms-token") || "", upload: null, asset: null, timer: null };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: `Bearer ${state.token}` });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error(body && body.message ? `${response.status}: ${body.message}` : `HTTP ${response.status}`);
  }
  return body;
}

function text(id, value) { $(id).textContent = value == null ? "" : String(value); }

async function signIn(event) {
  if (event) event.preventDefault();
  const typed = $("token").value.trim();
  if (typed) state.token = typed;
  try {
    const status = await api("/v1/status");
    sessionStorage.setItem("flame-cms-token", state.token);
    text("who", `signed in · storage ${status.storage} · ${status.database} · analysis ${status.analysis}`);
    document.body.dataset.signedIn = "yes";
    await refresh();
  } catch (err) {
    text("who", `sign-in failed: ${err.message}`);
    document.body.dataset.signedIn = "no";
  }
}

// -- upload (tus-js-client) ----------------------------------------------------------------------

function setProgress(sent, total, label) {
  const pct = total ? Math.floor((sent / total) * 100) : 0;
  $("progress").value = pct;
  $("progress").dataset.bytes = String(sent);
  text("progress-text", `${label} ${pct}% (${sent} / ${total} bytes)`);
}

function startUpload() {
  const file = $("file").files[0];
  if (!file) { text("upload-error", "choose a file first"); return; }
  text("upload-error", "");
  const metadata = { filename: file.name, filetype: file.type || "application/octet-stream" };
  if ($("synopsis").value) metadata.synopsis = $("synopsis").value;
  if ($("tags").value) metadata.tags = $("tags").value;
  if ($("reference").value) metadata.reference = $("reference").value;
  const upload = new tus.Upload(file, {
    endpoint: "/v1/uploads",
    headers: { Authorization: `Bearer ${state.token}` },
    chunkSize: 256 * 1024,
    retryDelays: [0, 500, 2000],
    metadata,
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    onProgress: (sent, total) => setProgress(sent, total, "uploading"),
    onError: (err) => {
      text("upload-error", String(err && err.message ? err.message : err));
      document.body.dataset.upload = "error";
      $("pause").disabled = true; $("resume").disabled = false;
    },
    onSuccess: async () => {
      const id = upload.url.split("/").pop();
      setProgress(file.size, file.size, "done");
      document.body.dataset.upload = "done";
      document.body.dataset.assetId = id;
      $("pause").disabled = true; $("resume").disabled = true; $("upload").disabled = false;
      await refresh();
      await showAsset(id);
    },
  });
  state.upload = upload;
  document.body.dataset.upload = "running";
  $("upload").disabled = true; $("pause").disabled = false; $("resume").disabled = true;
  upload.findPreviousUploads().then((previous) => {
    if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
    upload.start();
  });
}

async function pauseUpload() {
  if (!state.upload) return;
  await state.upload.abort();  // the bytes sent so far stay on the server
  document.body.dataset.upload = "paused";
  $("pause").disabled = true; $("resume").disabled = false;
  text("progress-text", `paused at ${$("progress").value}% — Resume continues from the server's offset`);
}

function resumeUpload() {
  if (!state.upload) return;
  document.body.dataset.upload = "running";
  $("pause").disabled = false; $("resume").disabled = true;
  state.upload.start();  // HEAD for the offset, then PATCH from there
}

// -- catalogue -------------------------------------------------------------------------------------

async function refresh(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams();
  if ($("q").value) params.set("q", $("q").value);
  if ($("min-height").value) params.set("min_height", $("min-height").value);
  if ($("codec").value) params.set("codec", $("codec").value);
  const found = await api(`/v1/assets?${params}`);
  const rows = $("assets").querySelector("tbody");
  rows.replaceChildren();
  const refs = $("reference");
  const chosen = refs.value;
  refs.replaceChildren(new Option("none", ""));
  for (const a of found.assets) {
    const tr = document.createElement("tr");
    tr.dataset.id = a.id;
    const cells = [a.name, a.status, a.width ? `${a.width}x${a.height}` : "", a.video_codec || "",
      a.duration_s != null ? `${a.duration_s.toFixed(1)} s` : "", a.vmaf != null ? a.vmaf.toFixed(1) : "",
      a.published ? "yes" : ""];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => showAsset(a.id));
    rows.appendChild(tr);
    refs.appendChild(new Option(a.name, a.id));
  }
  refs.value = chosen;
  document.body.dataset.assets = String(found.total);
}

// -- asset page ------------------------------------------------------------------------------------

function fill(id, pairs) {
  const dl = $(id);
  dl.replaceChildren();
  for (const [key, value] of pairs) {
    if (value == null || value === "") continue;
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd"); dd.textContent = value; dd.dataset.key = key;
    dl.append(dt, dd);
  }
}

function fmt(v, digits = 2) { return typeof v === "number" ? v.toFixed(digits) : v; }

async function showAsset(id) {
  clearTimeout(state.timer);
  const a = await api(`/v1/assets/${id}`);
  state.asset = a;
  $("asset-panel").hidden = false;
  text("asset-name", a.name);
  text("asset-status", a.status);
  $("asset-status").dataset.status = a.status;
  text("asset-reason", a.reason || "");
  const t = a.technical || {}; const v = t.video || {}; const au = t.audio || {};
  fill("technical", [
    ["container", t.container], ["duration", t.duration_s != null ? `${fmt(t.duration_s)} s` : null],
    ["bitrate", t.bitrate ? `${Math.round(t.bitrate / 1000)} kb/s` : null],
    ["video codec", v.codec], ["resolution", v.width ? `${v.width}x${v.height}` : null],
    ["frame rate", v.fps], ["pixel format", v.pix_fmt],
    ["audio codec", au.codec], ["audio layout", au.layout], ["sample rate", au.sample_rate],
    ["size", `${a.size} bytes`], ["sha256", a.sha256],
  ]);
  const q = a.quality || {}; const fr = q.full_reference || {}; const nr = q.no_reference || {};
  const verdict = q.verdict || {};
  fill("quality", [
    ["VMAF", fmt(fr.vmaf)], ["VMAF min", fmt(fr.vmaf_min)], ["PSNR (Y)", fr.psnr_y != null ? `${fmt(fr.psnr_y)} dB` : null],
    ["SSIM", fmt(fr.ssim, 4)], ["reference", fr.reference],
    ["blockiness", nr.blockiness ? fmt(nr.blockiness.mean) : null], ["blur", nr.blur ? fmt(nr.blur.mean) : null],
    ["frozen", nr.freeze ? `${nr.freeze.seconds} s` : null], ["black", nr.black ? `${nr.black.seconds} s` : null],
    ["verdict", verdict.accepted === undefined ? null : (verdict.accepted ? "accepted" : `rejected: ${verdict.reasons.join("; ")}`)],
    ["not checked", (verdict.not_checked || []).join("; ")],
    ["analysis time", q.seconds != null ? `${fmt(q.seconds)} s` : null],
  ]);
  text("description", JSON.stringify(a.description, null, 2));
  $("publish").disabled = a.published; $("unpublish").disabled = !a.published;
  $("public-link").hidden = !a.published;
  if (a.published) $("public-link").href = a.links.public;
  document.body.dataset.assetStatus = a.status;
  if (["queued", "analysing", "stored"].includes(a.status)) {
    state.timer = setTimeout(() => showAsset(id).then(refresh), 500);
  }
}

async function setPublished(on) {
  if (!state.asset) return;
  try {
    await api(`/v1/assets/${state.asset.id}/publish`, { method: on ? "POST" : "DELETE" });
    await showAsset(state.asset.id);
    await refresh();
  } catch (err) {
    text("asset-reason", err.message);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", signIn);
  $("upload").addEventListener("click", startUpload);
  $("pause").addEventListener("click", pauseUpload);
  $("resume").addEventListener("click", resumeUpload);
  $("search").addEventListener("submit", refresh);
  $("publish").addEventListener("click", () => setPublished(true));
  $("unpublish").addEventListener("click", () => setPublished(false));
  if (state.token) signIn();
});
