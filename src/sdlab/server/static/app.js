// sdlab studio: plain JS over the HTTP API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["done", "failed", "cancelled", "interrupted"]);
const MODES = ["txt2img", "img2img", "inpaint", "attend", "edit", "train", "grid", "merge"];
const S = { token: null, mode: "txt2img", job: null, source: null };

// --- token: ?token=... in the address, kept in sessionStorage ------------------------------
(function initToken() {
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t) {
    sessionStorage.setItem("sdlab-token", t);
    url.searchParams.delete("token");
    history.replaceState(null, "", url);
  }
  S.token = sessionStorage.getItem("sdlab-token");
})();

function withToken(path) {
  if (!S.token) return path;
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(S.token);
}

function errorText(body, status) {
  const d = body && body.detail;
  if (Array.isArray(d)) return d.map((e) => `${e.loc.filter((l) => l !== "body").join(".")}: ${e.msg}`).join("\n");
  return d || `request failed (HTTP ${status})`;
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (S.token) headers.Authorization = "Bearer " + S.token;
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  const body = await res.json().catch(() => null);
  if (res.status === 401) $("token-form").hidden = false;
  if (!res.ok) throw new Error(errorText(body, res.status));
  return body;
}

function showError(msg) {
  $("error").textContent = msg || "";
  $("error").hidden = !msg;
}

// --- form --------------------------------------------------------------------------------------
function setMode(mode) {
  S.mode = mode;
  for (const m of MODES) {
    $("tab-" + m).classList.toggle("active", m === mode);
    $("tab-" + m).setAttribute("aria-selected", String(m === mode));
  }
  $("img2img-fields").hidden = mode !== "img2img" && mode !== "inpaint";
  $("inpaint-fields").hidden = mode !== "inpaint";
  if (!S.strengthTouched) {  // each job's default strength (inpaint's measured recipe is 1) until the user moves it
    $("strength").value = $("strength-out").textContent = mode === "inpaint" ? "1" : "0.75";
  }
  $("attend-fields").hidden = mode !== "attend";
  $("edit-fields").hidden = mode !== "edit";
  $("train-fields").hidden = mode !== "train";
  $("generate").textContent = mode === "train" ? "Train" : "Generate";
  $("sampling-fields").hidden = mode === "train";
  $("batch-fields").hidden = mode !== "txt2img" && mode !== "img2img";
  $("trained-fields").hidden = mode !== "txt2img" && mode !== "img2img";
  $("clip-fields").hidden = mode === "train";
  $("hires-fields").hidden = mode !== "txt2img";
  $("prompt-label").textContent = { edit: "Source prompt", train: "Instance prompt" }[mode] || "Prompt";
  setFormsMode(mode);  // forms.js: grid, merge, ControlNet
}

function parseReweight(text) {  // "red=2, circle=0.5" -> {red: 2, circle: 0.5}
  const out = {};
  for (const item of text.split(/[,\s]+/).filter(Boolean)) {
    const i = item.lastIndexOf("=");
    const value = Number(item.slice(i + 1));
    if (i <= 0 || item.slice(i + 1) === "" || !Number.isFinite(value)) {
      throw new Error(`reweight takes word=factor, e.g. red=2; got "${item}"`);
    }
    out[item.slice(0, i)] = value;
  }
  return out;
}

function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function trainRequest() {
  const files = $("train-images").files;
  if (!files.length) return Promise.reject(new Error("training needs at least one image"));
  const form = new FormData();
  form.append("instance_prompt", $("prompt").value);
  form.append("method", $("train-method").value);
  const fields = { max_steps: "max_steps", learning_rate: "learning_rate", rank: "rank",
                   lora_targets: "lora-targets", placeholder: "ti-placeholder", initializer: "ti-initializer" };
  for (const [name, id] of Object.entries(fields)) {
    if ($(id).value.trim() !== "") form.append(name, $(id).value.trim());
  }
  if ($("seed").value.trim() !== "") form.append("seed", $("seed").value.trim());
  for (const f of files) form.append("images", f);
  return api("/api/train", { method: "POST", body: form });
}

function request() {
  if (S.mode === "train") return trainRequest();
  if (S.mode === "merge") return mergeRequest();  // forms.js
  const p = {
    prompt: $("prompt").value, negative_prompt: $("negative_prompt").value, sampler: $("sampler").value,
    schedule: $("schedule").value || null,
    steps: numberOrNull("steps"), cfg_scale: numberOrNull("cfg_scale"), seed: numberOrNull("seed"),
    width: numberOrNull("width"), height: numberOrNull("height"),
    batch_size: numberOrNull("batch_size"), batch_count: numberOrNull("batch_count"),
  };
  for (const k of Object.keys(p)) if (p[k] === null) delete p[k];
  if ($("vae").value) p.vae = $("vae").value;
  if ($("trained").value && (S.mode === "txt2img" || S.mode === "img2img")) {
    p.trained = $("trained").value;
    p.trained_scale = numberOrNull("trained_scale") ?? 1;
  }
  p.clip_skip = numberOrNull("clip_skip") ?? 1;           // every sampling tab (train returned above)
  if (S.mode === "txt2img" && numberOrNull("deep_shrink")) p.deep_shrink = numberOrNull("deep_shrink");
  if (S.mode === "txt2img" && (numberOrNull("hires_scale") ?? 1) > 1) {
    Object.assign(p, { hires_scale: numberOrNull("hires_scale"), hires_upscaler: $("hires_upscaler").value,
                       hires_steps: numberOrNull("hires_steps") ?? 0, hires_strength: Number($("hires_strength").value) });
    if ($("hires_sampler").value) p.hires_sampler = $("hires_sampler").value;
  }
  if (S.mode === "txt2img") return $("control_image").files[0] ? controlRequest(p) : postJson("/api/generate", p);
  if (S.mode === "grid") return gridRequest(p);  // forms.js
  if (S.mode === "attend" || S.mode === "edit") { delete p.batch_size; delete p.batch_count; }
  if (S.mode === "attend") {
    p.layers = ["down", "mid", "up"].filter((l) => $("layer-" + l).checked);
    return postJson("/api/attend", p);
  }
  if (S.mode === "edit") {
    const e = { source: p.prompt, mode: $("edit-mode").value, cross_replace: Number($("cross_replace").value),
                self_replace: Number($("self_replace").value), blend: $("blend").value.split(/[,\s]+/).filter(Boolean) };
    if ($("target").value.trim()) e.target = $("target").value;
    try { e.reweight = parseReweight($("reweight").value); } catch (err) { return Promise.reject(err); }
    delete p.prompt;
    return postJson("/api/edit", Object.assign(p, e));
  }
  if (S.mode === "inpaint") return inpaintRequest(p);  // inpaint.js
  const file = $("image").files[0];
  if (!file) return Promise.reject(new Error("img2img needs an input image"));
  const form = new FormData();
  for (const [k, v] of Object.entries(p)) form.append(k, String(v));
  form.append("strength", $("strength").value);
  form.append("image", file);
  return api("/api/img2img", { method: "POST", body: form });
}

async function submit(ev) {
  ev.preventDefault();
  showError("");
  $("generate").disabled = true;
  try {
    const job = await request();
    follow(job);
  } catch (e) {
    showError(e.message);
  } finally {
    $("generate").disabled = false;
  }
}

// --- following a job ---------------------------------------------------------------------------
function setProgress(job) {
  const pct = Math.round(100 * (job.progress || 0));
  $("bar-fill").style.width = pct + "%";
  $("progress").setAttribute("aria-valuenow", String(pct));
  const steps = job.total ? ` ${job.step}/${job.total}` : "";
  $("job-state").textContent = job.state + (job.state === "running" ? steps : "");
}

function follow(job) {
  if (S.source) S.source.close();
  S.job = job;
  $("results").innerHTML = "";
  if ($("tokens")) $("tokens").remove();
  $("loss-box").hidden = job.kind !== "train";
  $("loss-line").setAttribute("points", "");
  $("loss-value").textContent = "–";
  $("loss-step").textContent = "";
  $("meta").hidden = true;
  $("placeholder").hidden = true;
  $("preview").hidden = true;
  $("cancel").disabled = false;
  setProgress(job);
  const es = new EventSource(withToken(`/api/jobs/${job.id}/events`));
  S.source = es;
  const onEvent = (ev) => {
    const j = JSON.parse(ev.data);
    if (j.id !== (S.job && S.job.id)) return;
    setProgress(j);
    if (j.preview) { $("preview").src = j.preview; $("preview").hidden = false; }
    if (j.kind === "train") showLoss(j);
    if (ev.type === "end") finish(j);
  };
  es.addEventListener("progress", onEvent);
  es.addEventListener("end", (ev) => { onEvent(ev); es.close(); });
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) poll(job.id); };
  refreshJobs();
}

async function poll(id) {  // fallback when the stream drops
  try {
    const j = await api(`/api/jobs/${id}`);
    setProgress(j);
    if (TERMINAL.has(j.state)) finish(j); else setTimeout(() => poll(id), 1000);
  } catch (e) { showError(e.message); }
}

function finish(job) {
  $("cancel").disabled = true;
  if (job.state === "done" && job.result) {
    const r = job.result;
    if (job.kind === "train") {
      showLoss(job);
      $("preview").hidden = true;
      showMeta(`${r.method}: ${r.steps} steps\nsaved: ${r.saved.join(", ")}`);
      refreshTrained().then(() => {
        const use = button("Generate with this", () => { $("trained").value = job.id; setMode("txt2img"); });
        use.id = "use-trained";
        $("results").appendChild(use);
      });
    } else if (job.kind === "attend") showAttention(r);
    else if (job.kind === "grid") showGrid(r);  // forms.js
    else if (job.kind === "merge") showMerge(r);
    else if (job.kind === "edit") {
      showImages([{ url: r.source.url, caption: `source · seed ${r.source.seed}`, infotext: r.source.infotext },
                  { url: r.target.url, caption: "edited", infotext: r.target.infotext }]);
      $("results").classList.add("pair");
    } else showImages(r.images.map((im) => ({ url: im.url, caption: `seed ${im.seed}`, infotext: im.infotext })));
    refreshGallery();
  } else if (job.error) {
    showError(`${job.state}: ${job.error}`);
  }
  refreshJobs();
}

function showImages(images) {
  $("preview").hidden = true;
  const box = $("results");
  box.innerHTML = "";
  box.classList.remove("pair");
  if ($("tokens")) $("tokens").remove();
  for (const im of images) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = withToken(im.url);
    img.alt = im.caption;
    img.addEventListener("click", () => showMeta(im.infotext));
    const cap = document.createElement("figcaption");
    const a = document.createElement("a");
    a.href = withToken(im.url + (im.url.includes("?") ? "&" : "?") + "download=1");
    a.textContent = im.caption + " · download";
    cap.appendChild(a);
    fig.append(img, cap);
    box.appendChild(fig);
  }
  $("placeholder").hidden = images.length > 0;
  showMeta(images.length ? images[0].infotext : "");
}

// Training: the latest loss and the curve of every step so far.
function showLoss(job) {
  const losses = job.losses || [];
  if (!losses.length) return;
  $("loss-box").hidden = false;
  $("loss-value").textContent = losses[losses.length - 1].toFixed(4);
  $("loss-step").textContent = `step ${losses.length}${job.total ? " / " + job.total : ""}`;
  const lo = Math.min(...losses), hi = Math.max(...losses), span = hi - lo || 1;
  const n = Math.max(losses.length - 1, 1);
  $("loss-line").setAttribute("points", losses.map((v, i) =>
    `${(300 * i / n).toFixed(1)},${(76 - 72 * (v - lo) / span).toFixed(1)}`).join(" "));
}

// Attention: the image beside the overlay of the chosen token; one chip per prompt token.
function showAttention(r) {
  showImages([{ url: r.image.url, caption: `seed ${r.image.seed}`, infotext: r.image.infotext },
              { url: r.tokens.length ? r.tokens[0].url : r.grid.url, caption: "attention", infotext: r.image.infotext }]);
  const box = $("results");
  box.classList.add("pair");
  const view = box.querySelectorAll("img")[1];
  view.id = "attn-view";
  const chips = document.createElement("div");
  chips.className = "chips";
  chips.id = "tokens";
  for (const t of r.tokens) {
    const b = button(t.text, () => {
      view.src = withToken(t.url);
      view.alt = `attention of "${t.text}"`;
      for (const c of chips.children) c.setAttribute("aria-pressed", String(c === b));
    });
    b.className = "chip";
    b.setAttribute("aria-pressed", "false");
    chips.appendChild(b);
  }
  const grid = document.createElement("a");
  grid.href = withToken(r.grid.url);
  grid.target = "_blank";
  grid.textContent = "all tokens (grid)";
  chips.appendChild(grid);
  box.after(chips);
  if (chips.firstChild && r.tokens.length) chips.firstChild.click();
}

function showMeta(text) {
  $("meta").textContent = text || "";
  $("meta").hidden = !text;
}

async function cancelJob(id) {
  try { await api(`/api/jobs/${id}/cancel`, { method: "POST" }); } catch (e) { showError(e.message); }
  refreshJobs();
}

async function resumeJob(id) {
  try { follow(await api(`/api/jobs/${id}/resume`, { method: "POST" })); } catch (e) { showError(e.message); }
}

// --- queue and gallery ---------------------------------------------------------------------------
async function refreshJobs() {
  let data;
  try { data = await api("/api/jobs?limit=20"); } catch (e) { return; }
  const list = $("jobs");
  list.innerHTML = "";
  for (const j of data.jobs) {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.className = "prompt";
    text.textContent = `${j.kind}: ${j.params.prompt || j.params.source || j.params.instance_prompt || j.params.name || ""}`;
    const st = document.createElement("span");
    st.className = "state-" + j.state;
    st.textContent = j.state;
    li.append(text, st);
    if (!TERMINAL.has(j.state)) li.appendChild(button("cancel", () => cancelJob(j.id)));
    else if (j.state !== "done") li.appendChild(button("resume", () => resumeJob(j.id)));
    list.appendChild(li);
  }
  const c = data.counts;
  $("status").textContent = `${S.model || "model"} · ${c.running} running · ${c.queued} queued`;
}

// Finished train jobs, for the "Trained" select (their LoRA or embedding is applied server-side).
async function refreshTrained() {
  let data;
  try { data = await api("/api/jobs?state=done&limit=100"); } catch (e) { return; }
  const select = $("trained"), keep = select.value;
  select.length = 1;
  for (const j of data.jobs.filter((j) => j.kind === "train")) {
    const what = j.params.method === "lora" ? "LoRA" : `embedding ${j.params.placeholder}`;
    select.add(new Option(`${what} · ${j.params.instance_prompt} · ${j.id.slice(0, 6)}`, j.id));
  }
  select.value = [...select.options].some((o) => o.value === keep) ? keep : "";
}

function button(label, fn) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", fn);
  return b;
}

async function refreshGallery() {
  let data;
  try { data = await api("/api/gallery?limit=60"); } catch (e) { return; }
  const box = $("gallery");
  box.innerHTML = "";
  for (const it of data.items) {
    const b = button("", () => showImages([{ url: it.url, caption: it.name, infotext: it.parameters || "" }]));
    b.title = it.prompt;
    const img = document.createElement("img");
    img.src = withToken(it.url);
    img.alt = it.prompt || it.name;
    img.loading = "lazy";
    const cap = document.createElement("span");
    cap.textContent = it.prompt || it.name;
    b.append(img, cap);
    box.appendChild(b);
  }
  if (!data.items.length) box.innerHTML = '<p class="muted">No images yet.</p>';
}

async function init() {
  $("gen-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", () => S.job && cancelJob(S.job.id));
  $("seed-random").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 32); });
  $("lora-tag").addEventListener("change", (e) => {  // A1111's extra-networks click: append the tag
    const name = e.target.value;
    if (!name) return;
    const prompt = $("prompt");
    prompt.value = `${prompt.value.trimEnd()} <lora:${name}:1>`.trimStart();
    e.target.value = "";
  });
  for (const m of MODES) $("tab-" + m).addEventListener("click", () => setMode(m));
  for (const id of ["strength", "cross_replace", "self_replace", "hires_strength"]) {
    $(id).addEventListener("input", () => { $(id + "-out").textContent = $(id).value; });
  }
  $("strength").addEventListener("input", () => { S.strengthTouched = true; });
  $("gallery-refresh").addEventListener("click", refreshGallery);
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    S.token = $("token").value.trim();
    sessionStorage.setItem("sdlab-token", S.token);
    $("token-form").hidden = true;
    init2();
  });
  init2();
}

async function init2() {
  try {
    const o = await api("/api/options");
    S.model = o.model;
    $("sampler").innerHTML = "";
    for (const name of o.samplers) $("sampler").add(new Option(name, name, false, name === o.default_sampler));
    $("hires_sampler").innerHTML = "";
    $("hires_sampler").add(new Option("Use same sampler", "", false, true));
    for (const name of o.samplers) $("hires_sampler").add(new Option(name, name));
    $("schedule").innerHTML = "";
    for (const name of o.schedules) $("schedule").add(new Option(name, name, false, name === o.default_schedule));
    if (o.default_cfg_scale != null) $("cfg_scale").value = o.default_cfg_scale;
    if (o.native_size) {
      for (const id of ["width", "height"]) if (!$(id).value) $(id).value = o.native_size;
    }
    for (const id of ["width", "height"]) $(id).max = o.limits.max_side;
    for (const name of o.loras) $("lora-tag").add(new Option(name, name));
    $("lora-tag-fields").hidden = o.loras.length === 0;
    for (const name of o.vaes) $("vae").add(new Option(name, name));
    $("vae-fields").hidden = o.vaes.length === 0;
    fillFormOptions(o);  // forms.js
  } catch (e) {
    $("status").textContent = e.message;
    return;
  }
  refreshJobs();
  refreshGallery();
  refreshTrained();
}

document.addEventListener("DOMContentLoaded", init);
