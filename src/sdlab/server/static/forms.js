// sdlab studio: the ControlNet section of txt2img (POST /api/control), the grid tab (an X/Y/Z plot,
// POST /api/grid) and the merge tab (A1111's checkpoint merger, POST /api/merge).
"use strict";

const AXES = ["x", "y", "z"];

function fillSelect(id, names, none) {
  const select = document.getElementById(id), keep = select.value;
  select.innerHTML = "";
  if (none !== undefined) select.add(new Option(none, ""));
  for (const name of names) select.add(new Option(name, name));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

// The choices /api/options lists: ControlNets and control types, grid axes, models to merge.
function fillFormOptions(o) {  // eslint-disable-line no-unused-vars
  fillSelect("controlnet", o.controlnets || []);
  fillSelect("control_type", o.control_types || ["none"]);
  document.getElementById("control-empty").hidden = (o.controlnets || []).length > 0;
  fillSelect("grid-x-axis", o.grid_axes || []);
  for (const k of ["y", "z"]) fillSelect(`grid-${k}-axis`, o.grid_axes || [], "none");
  for (const k of ["a", "b"]) fillSelect(`merge-${k}`, o.merge_models || []);
  fillSelect("merge-c", o.merge_models || [], "none");
  if (o.merge_models && o.merge_models.length > 1) document.getElementById("merge-b").selectedIndex = 1;
  document.getElementById("merge-empty").hidden = (o.merge_models || []).length > 0;
}

// What the grid and merge tabs show and hide (app.js's setMode does the rest).
function setFormsMode(mode) {  // eslint-disable-line no-unused-vars
  const merge = mode === "merge";
  document.getElementById("grid-fields").hidden = mode !== "grid";
  document.getElementById("merge-fields").hidden = !merge;
  document.getElementById("control-fields").hidden = mode !== "txt2img";
  document.getElementById("prompt-field").hidden = merge;
  document.getElementById("prompt").required = !merge;
  document.getElementById("sampling-fields").hidden = merge || mode === "train";
  document.getElementById("clip-fields").hidden = merge || mode === "train";
  if (merge) document.getElementById("generate").textContent = "Merge";
}

// txt2img with a control image: the shared fields `p` plus the ControlNet's, as a multipart form.
function controlRequest(p) {  // eslint-disable-line no-unused-vars
  const form = new FormData();
  for (const [k, v] of Object.entries(p)) form.append(k, String(v));
  for (const id of ["controlnet", "control_type", "control_scale", "control_start", "control_end"]) {
    form.append(id, document.getElementById(id).value);
  }
  form.append("guess_mode", String(document.getElementById("guess_mode").checked));
  form.append("control_image", document.getElementById("control_image").files[0]);
  return api("/api/control", { method: "POST", body: form });
}

function gridRequest(p) {  // eslint-disable-line no-unused-vars
  delete p.batch_size; delete p.batch_count;
  for (const k of AXES) {
    const axis = document.getElementById(`grid-${k}-axis`).value;
    const values = document.getElementById(`grid-${k}-values`).value.trim();
    if (k === "x" && !values) return Promise.reject(new Error("give the X axis its values, e.g. 10,20,30"));
    if (axis && values) p[k] = `${axis}=${values}`;
  }
  p.vary_seeds = document.getElementById("vary_seeds").checked;
  return postJson("/api/grid", p);
}

function mergeRequest() {  // eslint-disable-line no-unused-vars
  const v = (id) => document.getElementById(id).value;
  const name = v("merge-name").trim();
  if (!name) return Promise.reject(new Error("give the merged model a name"));
  const body = { a: v("merge-a"), b: v("merge-b"), mode: v("merge-mode"), alpha: Number(v("merge-alpha")), name };
  if (v("merge-c")) body.c = v("merge-c");
  return postJson("/api/merge", body);
}

// A finished grid: the labelled grid first, then every cell.
function showGrid(r) {  // eslint-disable-line no-unused-vars
  const cells = r.images.map((im) => ({ url: im.url, caption: `x${im.x} y${im.y} z${im.z} · seed ${im.seed}`,
                                        infotext: im.infotext }));
  showImages([{ url: r.grid.url, caption: "grid", infotext: cells.length ? cells[0].infotext : "" }, ...cells]);
  const first = document.querySelector("#results figure");
  if (first) first.classList.add("grid-figure");
}

function showMerge(r) {  // eslint-disable-line no-unused-vars
  document.getElementById("preview").hidden = true;
  showMeta(`merged: ${r.path}\n${r.kind}, ${r.tensors} tensors, ${r.mode} alpha ${r.alpha}`);
}

document.addEventListener("DOMContentLoaded", () => {
  const alpha = document.getElementById("merge-alpha");
  alpha.addEventListener("input", () => { document.getElementById("merge-alpha-out").textContent = alpha.value; });
});
