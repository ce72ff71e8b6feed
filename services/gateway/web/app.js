// The user's page: sign up or sign in with a key, generate and watch the image develop,
// tweak an image under a painted mask, browse the gallery. Everything goes through the
// public API (api.js); the key and the job being followed live in localStorage, so a
// reload picks the job up again.
import { ApiError, call, events, newKey, send, seconds } from "./api.js";
import { $, el } from "./dom.js";

const KEY = "darkroom.key";
const JOB = "darkroom.job";
const POLL_MS = 700;
const PREVIEWS = 3;
const GALLERY_PAGE = 12;
const QUALITIES = ["low", "medium", "high"];


let key = localStorage.getItem(KEY);
let account = null;
let following = null; // {id, stop()} of the job on screen
let countdown = null; // the timer of a 429 or lane_full countdown
const imageUrls = new Map(); // image id -> blob URL of its file

// --- messages ------------------------------------------------------------------------

function say(text, where = "message") {
  $(where).textContent = text;
}

function clearCountdown() {
  if (countdown) clearInterval(countdown);
  countdown = null;
}

/**
 * Say what went wrong in plain words; a 429 counts down and runs `retry` when it ends.
 * @param {Error} error
 * @param {() => void} retry - sends the same request again (for rate limits).
 */
function explain(error, retry) {
  clearCountdown();
  if (!(error instanceof ApiError)) {
    say(error.message || String(error));
    return;
  }
  if (error.status === 401) {
    signOut(`Your API key was refused: ${error.message} Sign in again.`);
    return;
  }
  if (error.code === "rate_limit_exceeded" && retry) {
    let left = Math.max(1, Math.ceil(error.retryAfterS ?? 5));
    const tick = () => say(`Too many requests for your tier. Trying again in ${seconds(left)}.`);
    tick();
    countdown = setInterval(() => {
      left -= 1;
      if (left > 0) return tick();
      clearCountdown();
      say("Trying again now.");
      retry();
    }, 1000);
    return;
  }
  if (error.code === "lane_full") {
    const wait = error.retryAfterS ?? 30;
    const at = new Date(Date.now() + wait * 1000).toLocaleTimeString();
    say(`Every decoder for your tier is busy and its queue is full. Come back in ${seconds(wait)} (at ${at}).`);
    return;
  }
  if (error.code === "moderation_blocked") {
    say(`Blocked by the safety system: ${error.message} No image was made.`);
    return;
  }
  if (error.code === "insufficient_quota") {
    say(`You have made all the images your tier allows today: ${error.message}`);
    return;
  }
  say(error.param ? `${error.message} (${error.param})` : error.message);
}

// --- account -----------------------------------------------------------------------

async function signIn(newKeyValue, note = "") {
  try {
    account = await call("/v1/account", { key: newKeyValue });
  } catch (error) {
    say(error instanceof ApiError && error.status === 401 ? `That key was refused: ${error.message}` : error.message, "signin-message");
    return false;
  }
  key = newKeyValue;
  localStorage.setItem(KEY, key);
  say(note, "signin-message");
  show();
  return true;
}

function signOut(why = "") {
  if (following) following.stop();
  following = null;
  clearCountdown();
  key = null;
  account = null;
  localStorage.removeItem(KEY);
  localStorage.removeItem(JOB);
  for (const url of imageUrls.values()) URL.revokeObjectURL(url);
  imageUrls.clear();
  $("gallery-list").replaceChildren();
  $("job").hidden = true;
  say(why, "signin-message");
  show();
}

function show() {
  const signedIn = Boolean(key && account);
  $("signin").hidden = signedIn;
  for (const id of ["create", "gallery", "nav", "who"]) $(id).hidden = !signedIn;
  if (!signedIn) return;
  $("who-text").textContent = `${account.id} · ${account.tier} tier`;
  limitChoices();
  refreshGallery();
  const stored = localStorage.getItem(JOB);
  if (stored && !following) follow(JSON.parse(stored).id, { resumed: true });
}

/** Offer only the `n` and quality the account's tier allows. */
function limitChoices() {
  const limits = account.limits || {};
  const maxN = Number(limits.max_n ?? 4);
  for (const option of $("n").options) option.disabled = Number(option.value) > maxN;
  const highest = QUALITIES.indexOf(limits.max_quality ?? "high");
  for (const option of $("quality").options) option.disabled = highest >= 0 && QUALITIES.indexOf(option.value) > highest;
}

$("signup-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = $("signup-email").value.trim();
  say("Creating your account…", "signin-message");
  try {
    const created = await call("/v1/accounts", { json: { email } });
    const note = created.status === "pending" ? "Your account is being created; it works in a few seconds." : "";
    // A pending account is not known yet, so its key cannot be checked: keep it anyway.
    if (!(await signIn(created.api_key, note)) && created.status === "pending") {
      key = created.api_key;
      account = { id: created.id, tier: created.tier, limits: {} };
      localStorage.setItem(KEY, key);
      show();
    }
  } catch (error) {
    say(error.param ? `${error.message}` : error.message, "signin-message");
  }
});

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (await signIn($("key-input").value.trim())) $("key-input").value = "";
});

$("sign-out").addEventListener("click", () => signOut("Signed out."));

// --- following a job -------------------------------------------------------------------

function statusText(job) {
  const { pass, total_passes: total } = job.progress || {};
  const wait = job.estimated_wait_s;
  const about =
    job.decoders_up === false
      ? " No renderer is up right now: it starts as soon as one is back."
      : wait === null || wait === undefined
        ? ""
        : ` About ${seconds(wait)} to wait.`;
  switch (job.status) {
    case "queued":
      return `Queued: waiting for a decoder.${about}`;
    case "deferred":
      return `Queued (deferred): your tier waits while paid work renders.${about}`;
    case "rendering":
      return `Rendering: pass ${pass} of ${total}.`;
    case "completed":
      return `Done: ${job.data ? job.data.length : 1} image${job.data && job.data.length > 1 ? "s" : ""}.`;
    case "cancelled":
      return "Cancelled.";
    case "blocked":
      return "Blocked by the safety system.";
    default:
      return "Failed.";
  }
}

function showJob(title) {
  $("job").hidden = false;
  $("job-title").textContent = title;
  $("job-images").replaceChildren();
  $("job-parent").textContent = "";
  $("job-progress").value = 0;
  $("cancel").hidden = false;
}

function showPreview(b64, index) {
  let img = $("job-images").querySelector("img.preview");
  if (!img) {
    img = el("img", { className: "preview", alt: "Preview of the image being rendered" });
    $("job-images").replaceChildren(img);
  }
  img.src = `data:image/png;base64,${b64}`;
  img.dataset.previewIndex = String(index);
}

async function showResult(images, prompt) {
  const holder = $("job-images");
  if (holder.dataset.done === "true") return;
  holder.dataset.done = "true";
  holder.replaceChildren(
    ...images.map((image, i) =>
      el("img", {
        className: "result",
        alt: `Result ${i + 1}: ${prompt}`,
        src: `data:image/${image.output_format || "png"};base64,${image.b64_json}`,
      }),
    ),
  );
  const [first] = images;
  if (first && first.image_id) {
    try {
      const info = await call(`/v1/images/${first.image_id}`, { key });
      if (info.parent) $("job-parent").textContent = `Tweaked from: ${info.parent.prompt} (${info.parent.id})`;
    } catch {
      // The lineage line is a nicety; the image is shown either way.
    }
  }
  refreshGallery();
}

/**
 * Follow a job until it ends: its status and pass counter by polling the job API (which
 * also works after a reload), its previews from the stream when one is open. A preview
 * asks for the status at once (`following.refresh`): a render can start and end between
 * two polls.
 */
function follow(jobId, { resumed = false, prompt = "" } = {}) {
  if (following) following.stop();
  let stopped = false;
  let timer = null;
  let asking = false;
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  const poll = async () => {
    if (stopped || asking) return;
    asking = true;
    try {
      await pollOnce();
    } finally {
      asking = false;
    }
  };
  const refresh = () => {
    if (stopped || asking) return;
    clearTimeout(timer);
    poll();
  };
  following = { id: jobId, stop, refresh };
  if (resumed) showJob("Current job");
  $("job-images").dataset.done = "false";
  const pollOnce = async () => {
    let job;
    try {
      job = await call(`/v1/images/jobs/${jobId}`, { key });
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        localStorage.removeItem(JOB);
        $("job").hidden = true;
        return;
      }
      timer = setTimeout(poll, POLL_MS * 3);
      return;
    }
    if (stopped) return;
    $("job-status").textContent = statusText(job);
    const { pass = 0, total_passes: total = 1 } = job.progress || {};
    $("job-progress").max = total || 1;
    $("job-progress").value = job.status === "completed" ? total : pass;
    const terminal = ["completed", "blocked", "failed", "cancelled"].includes(job.status);
    if (!terminal) {
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    $("cancel").hidden = true;
    localStorage.removeItem(JOB);
    following = null;
    if (job.status === "completed") {
      await showResult(
        job.data.map((item) => ({ ...item, output_format: job.output_format })),
        prompt || $("prompt").value,
      );
    } else {
      $("job-images").replaceChildren();
      if (job.status === "cancelled") say("The job was cancelled; nothing was stored.");
      else if (job.error) explain(new ApiError(job.status === "blocked" ? 400 : 500, job.error, null));
    }
  };
  poll();
}

$("cancel").addEventListener("click", async () => {
  if (!following) return;
  const jobId = following.id;
  $("cancel").disabled = true;
  try {
    const job = await call(`/v1/images/jobs/${jobId}/cancel`, { key, method: "POST" });
    $("job-status").textContent = statusText(job);
  } catch (error) {
    explain(error);
  } finally {
    $("cancel").disabled = false;
  }
});

/**
 * Start a job and follow it. With one image the request streams (previews as they come);
 * otherwise it asks for the job at once (`Prefer: respond-async`) and polls it.
 * @param {string} path - "/v1/images/generations" or "/v1/images/edits".
 * @param {() => ({json?: object, form?: FormData})} body - builds the request (again on a retry).
 * @param {string} prompt
 * @param {boolean} streamed
 */
async function startJob(path, body, prompt, streamed, title) {
  clearCountdown();
  say("");
  const idempotencyKey = newKey();
  const headers = { "idempotency-key": idempotencyKey };
  if (!streamed) headers.prefer = "respond-async";
  showJob(title);
  $("job-status").textContent = "Sending…";
  let response;
  try {
    response = await send(path, { key, headers, ...body() });
  } catch (error) {
    $("job").hidden = true;
    explain(error, () => startJob(path, body, prompt, streamed, title));
    return;
  }
  const jobId = response.headers.get("x-darkroom-job-id");
  localStorage.setItem(JOB, JSON.stringify({ id: jobId, prompt }));
  follow(jobId, { prompt });
  if (!streamed) return;
  try {
    for await (const { event, data } of events(response)) {
      if (event.endsWith(".partial_image")) {
        showPreview(data.b64_json, data.partial_image_index);
        if (following && following.id === jobId) following.refresh();
      }
      else if (event.endsWith(".completed")) await showResult([data], prompt);
      else if (event === "error" && data.error && data.error.code !== "job_cancelled") {
        explain(new ApiError(data.error.code === "moderation_blocked" ? 400 : 500, data.error, null));
      }
    }
  } catch {
    // The stream broke off (a reload, the network): polling follows the job to its end.
  }
}

$("generate-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const prompt = String(form.get("prompt")).trim();
  if (!prompt) {
    say("Type a prompt first.");
    return;
  }
  const n = Number(form.get("n"));
  const json = {
    prompt,
    n,
    quality: form.get("quality"),
    size: form.get("size"),
    output_format: form.get("output_format"),
  };
  const streamed = n === 1;
  if (streamed) Object.assign(json, { stream: true, partial_images: PREVIEWS });
  startJob("/v1/images/generations", () => ({ json }), prompt, streamed, "Current job");
});

// --- tweak -------------------------------------------------------------------------------

const painter = { image: null, painting: false, painted: false };

function openTweak(image) {
  painter.image = image;
  const [width, height] = image.size.split("x").map(Number);
  const canvas = $("mask");
  canvas.width = width;
  canvas.height = height;
  $("tweak-source").src = imageUrls.get(image.id) || "";
  $("tweak-prompt").value = image.prompt;
  clearMask();
  $("tweak-form").hidden = false;
  $("tweak-form").scrollIntoView({ block: "nearest" });
  $("tweak-prompt").focus();
}

function clearMask() {
  const canvas = $("mask");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  painter.painted = false;
}

function paintAt(event) {
  const canvas = $("mask");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const x = (event.clientX - box.left) * scale;
  const y = (event.clientY - box.top) * scale;
  const radius = (Number($("brush").value) / 2) * scale;
  const context = canvas.getContext("2d");
  context.fillStyle = "rgba(255, 64, 64, 0.55)";
  context.beginPath();
  context.arc(x, y, radius, 0, Math.PI * 2);
  context.fill();
  painter.painted = true;
}

$("mask").addEventListener("pointerdown", (event) => {
  painter.painting = true;
  $("mask").setPointerCapture(event.pointerId);
  paintAt(event);
});
$("mask").addEventListener("pointermove", (event) => painter.painting && paintAt(event));
$("mask").addEventListener("pointerup", () => (painter.painting = false));
$("clear-mask").addEventListener("click", clearMask);
$("paint-all").addEventListener("click", () => {
  const canvas = $("mask");
  const context = canvas.getContext("2d");
  context.fillStyle = "rgba(255, 64, 64, 0.55)";
  context.fillRect(0, 0, canvas.width, canvas.height);
  painter.painted = true;
});
$("tweak-close").addEventListener("click", () => ($("tweak-form").hidden = true));

/** The mask the API takes: opaque where the image stays, fully transparent where painted. */
function maskBlob() {
  const painted = $("mask");
  const mask = el("canvas", { width: painted.width, height: painted.height });
  const context = mask.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, mask.width, mask.height);
  context.globalCompositeOperation = "destination-out";
  context.drawImage(painted, 0, 0);
  // Painted strokes are half opaque on screen; any paint at all redraws the pixel.
  const pixels = context.getImageData(0, 0, mask.width, mask.height);
  for (let i = 3; i < pixels.data.length; i += 4) if (pixels.data[i] < 255) pixels.data[i] = 0;
  context.putImageData(pixels, 0, 0);
  return new Promise((resolve) => mask.toBlob(resolve, "image/png"));
}

$("tweak-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const image = painter.image;
  const prompt = $("tweak-prompt").value.trim();
  if (!image || !prompt) {
    say("Choose an image and type a prompt first.");
    return;
  }
  if (!painter.painted) {
    say("Paint the area to redraw first (or choose Paint all).");
    return;
  }
  const mask = await maskBlob();
  const body = () => {
    const form = new FormData();
    form.append("prompt", prompt);
    form.append("image_id", image.id);
    form.append("mask", mask, "mask.png");
    form.append("size", image.size);
    form.append("output_format", image.output_format);
    form.append("stream", "true");
    form.append("partial_images", String(PREVIEWS));
    return { form };
  };
  $("tweak-form").hidden = true;
  startJob("/v1/images/edits", body, prompt, true, "Tweak");
});

// --- gallery -----------------------------------------------------------------------------

let galleryCursor = null;
let galleryLoading = null;

async function fileUrl(imageId) {
  if (!imageUrls.has(imageId)) {
    const response = await send(`/v1/images/${imageId}/content`, { key });
    imageUrls.set(imageId, URL.createObjectURL(await response.blob()));
  }
  return imageUrls.get(imageId);
}

function lineage(image) {
  const line = el("p", { className: "lineage" });
  if (image.parent) {
    line.append("Tweaked from ", el("a", { href: `#image-${image.parent.id}`, textContent: image.parent.prompt }));
  }
  if (image.children && image.children.length) {
    if (image.parent) line.append(" · ");
    line.append(`Tweaks (${image.children.length}): `);
    image.children.forEach((child, i) => {
      if (i) line.append(", ");
      line.append(el("a", { href: `#image-${child.id}`, textContent: child.prompt }));
    });
  }
  return line.childNodes.length ? line : null;
}

function card(image, url) {
  const created = new Date(image.created_at * 1000);
  const ext = image.output_format === "jpeg" ? "jpg" : image.output_format;
  const tweak = el("button", { type: "button", textContent: "Tweak" });
  tweak.setAttribute("aria-label", `Tweak: ${image.prompt}`);
  tweak.addEventListener("click", () => openTweak(image));
  const download = el("a", { href: url, download: `${image.id}.${ext}`, textContent: "Download" });
  download.setAttribute("aria-label", `Download: ${image.prompt}`);
  const article = el(
    "article",
    {},
    el("img", { src: url, alt: image.prompt, loading: "lazy" }),
    el("p", { className: "prompt", textContent: image.prompt }),
    el(
      "p",
      { className: "meta" },
      el("time", { dateTime: created.toISOString(), textContent: created.toLocaleString() }),
      ` · ${image.size} · ${image.output_format}`,
    ),
    lineage(image),
    el("div", { className: "actions" }, download, tweak),
  );
  article.setAttribute("aria-label", image.prompt);
  return el("li", { id: `image-${image.id}` }, article);
}

async function loadGallery(reset) {
  if (!key) return;
  const params = new URLSearchParams({ limit: String(GALLERY_PAGE) });
  if (!reset && galleryCursor) params.set("after", galleryCursor);
  const page = await call(`/v1/images?${params}`, { key });
  const cards = await Promise.all(page.data.map(async (image) => card(image, await fileUrl(image.id))));
  if (reset) $("gallery-list").replaceChildren(...cards);
  else $("gallery-list").append(...cards);
  galleryCursor = page.last_id;
  $("more").hidden = !page.has_more;
  $("gallery-empty").hidden = $("gallery-list").children.length > 0;
}

function refreshGallery() {
  // One refresh at a time; a refresh asked for meanwhile runs after it.
  const run = () => loadGallery(true).catch((error) => explain(error));
  galleryLoading = (galleryLoading || Promise.resolve()).then(run);
  return galleryLoading;
}

$("refresh-gallery").addEventListener("click", refreshGallery);
$("more").addEventListener("click", () => loadGallery(false).catch((error) => explain(error)));

// --- start ---------------------------------------------------------------------------------

if (key) {
  signIn(key).then((ok) => ok || show());
} else {
  show();
}
