// sdlab studio, inpaint tab: the source image (the img2img upload) with a mask painted over it on a
// canvas (brush size, clear, invert), sent to POST /api/inpaint. The mask is kept at the image's
// own size (white = repaint); the view shows it in magenta over the image, scaled up for painting.
"use strict";

const MASK = { image: null, mask: null, painting: false, last: null };
const VIEW_SIDE = 256;  // the view's longer side in CSS pixels

function maskContext() {
  return MASK.mask.getContext("2d");
}

function redrawMask() {
  const view = document.getElementById("mask-view");
  if (!MASK.image) return;
  const ctx = view.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.globalAlpha = 1;
  ctx.drawImage(MASK.image, 0, 0, view.width, view.height);
  const w = MASK.mask.width, h = MASK.mask.height;       // the mask, translucent
  const data = maskContext().getImageData(0, 0, w, h).data;
  const red = new ImageData(w, h);
  for (let i = 0; i < data.length; i += 4) {
    red.data[i] = red.data[i + 2] = 255; red.data[i + 3] = data[i] > 127 ? 150 : 0;  // magenta
  }
  const tmp = document.createElement("canvas");
  tmp.width = w; tmp.height = h;
  tmp.getContext("2d").putImageData(red, 0, 0);
  ctx.drawImage(tmp, 0, 0, view.width, view.height);
  document.getElementById("mask-empty").hidden = maskPainted();
}

function maskPainted() {
  const data = maskContext().getImageData(0, 0, MASK.mask.width, MASK.mask.height).data;
  for (let i = 0; i < data.length; i += 4) if (data[i] > 127) return true;
  return false;
}

function clearMask(value) {
  const ctx = maskContext();
  ctx.fillStyle = value || "#000";
  ctx.fillRect(0, 0, MASK.mask.width, MASK.mask.height);
  redrawMask();
}

function invertMask() {
  const ctx = maskContext();
  const img = ctx.getImageData(0, 0, MASK.mask.width, MASK.mask.height);
  for (let i = 0; i < img.data.length; i += 4) {
    const v = img.data[i] > 127 ? 0 : 255;
    img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
    img.data[i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  redrawMask();
}

async function loadMaskImage(file) {
  MASK.image = await createImageBitmap(file);
  const { width: w, height: h } = MASK.image;
  MASK.mask = document.createElement("canvas");
  MASK.mask.width = w; MASK.mask.height = h;
  const view = document.getElementById("mask-view");
  const scale = VIEW_SIDE / Math.max(w, h);
  view.width = Math.round(w * scale); view.height = Math.round(h * scale);
  view.hidden = false;
  document.getElementById("brush").max = String(Math.max(8, Math.round(Math.max(w, h) / 2)));
  clearMask("#000");
}

function maskPoint(ev) {  // the pointer in mask pixels
  const view = document.getElementById("mask-view");
  const r = view.getBoundingClientRect();
  return [(ev.clientX - r.left) * MASK.mask.width / r.width, (ev.clientY - r.top) * MASK.mask.height / r.height];
}

function paint(ev) {
  const [x, y] = maskPoint(ev);
  const ctx = maskContext();
  const size = Number(document.getElementById("brush").value);
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = size;
  ctx.lineCap = "round";
  ctx.beginPath();
  if (MASK.last) { ctx.moveTo(MASK.last[0], MASK.last[1]); ctx.lineTo(x, y); ctx.stroke(); }
  ctx.beginPath();
  ctx.arc(x, y, size / 2, 0, 2 * Math.PI);
  ctx.fill();
  MASK.last = [x, y];
  redrawMask();
}

// The inpaint job from the shared fields `p` (prompt, sampler, ...): image, mask and the options.
function inpaintRequest(p) {  // eslint-disable-line no-unused-vars
  const file = document.getElementById("image").files[0];
  if (!file || !MASK.mask) return Promise.reject(new Error("inpaint needs an input image"));
  const expand = document.getElementById("expand").value.trim();
  if (!expand && !maskPainted()) {
    return Promise.reject(new Error("paint the area to repaint on the image (or give Outpaint sides)"));
  }
  delete p.width; delete p.height;           // the loop runs at the image's own size
  delete p.batch_size; delete p.batch_count;
  const form = new FormData();
  for (const [k, v] of Object.entries(p)) form.append(k, String(v));
  form.append("strength", document.getElementById("strength").value);
  for (const id of ["mask_blur", "masked_content", "padding"]) form.append(id, document.getElementById(id).value);
  form.append("only_masked", String(document.getElementById("only_masked").checked));
  form.append("image", file);
  if (expand) {
    form.append("expand", expand);
    return api("/api/inpaint", { method: "POST", body: form });
  }
  return new Promise((resolve) => MASK.mask.toBlob(resolve, "image/png")).then((blob) => {
    form.append("mask", blob, "mask.png");
    return api("/api/inpaint", { method: "POST", body: form });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const view = document.getElementById("mask-view");
  document.getElementById("image").addEventListener("change", (ev) => {
    if (ev.target.files[0]) loadMaskImage(ev.target.files[0]).catch((e) => showError(e.message));
  });
  view.addEventListener("pointerdown", (ev) => {
    if (!MASK.mask) return;
    MASK.painting = true; MASK.last = null;
    view.setPointerCapture(ev.pointerId);
    paint(ev);
  });
  view.addEventListener("pointermove", (ev) => { if (MASK.painting) paint(ev); });
  for (const type of ["pointerup", "pointercancel"]) {
    view.addEventListener(type, () => { MASK.painting = false; MASK.last = null; });
  }
  document.getElementById("mask-clear").addEventListener("click", () => MASK.mask && clearMask("#000"));
  document.getElementById("mask-invert").addEventListener("click", () => MASK.mask && invertMask());
  document.getElementById("brush").addEventListener("input", (ev) => {
    document.getElementById("brush-out").textContent = ev.target.value;
  });
});
