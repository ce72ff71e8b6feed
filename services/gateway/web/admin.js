// The operators' console: live lanes and decoder batches, tier policies and rollouts
// (edited through the same policy events the CLI publishes), dead letters with replay,
// recent jobs and each service's heartbeat. It speaks only the operator API under
// /v1/admin, with the operator token kept for this browser tab (sessionStorage).
import { ApiError, call, seconds } from "./api.js";
import { $, el } from "./dom.js";

const TOKEN = "darkroom.operator";
const LIVE_MS = 1500;
const SLOW_MS = 5000;
const QUALITIES = ["low", "medium", "high"];

const cell = (value, tag = "td") => el(tag, { textContent: value === null || value === undefined ? "–" : String(value) });

let token = sessionStorage.getItem(TOKEN);
let timers = [];
let policyShown = "";

/** Show a line in the message area: `ok` for a done action, otherwise it reads as a problem. */
function say(text, tone = "bad") {
  $("message").textContent = text;
  $("message").classList.toggle("ok", tone === "ok");
}

function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut(`The operator token was refused: ${error.message}`);
    return;
  }
  say(error.param ? `${error.message} (${error.param})` : error.message);
}

const admin = (path, options = {}) => call(`/v1/admin/${path}`, { key: token, ...options });

// --- lanes, batches, services (live) ------------------------------------------------------

function number(value, digits = 2) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits).replace(/\.?0+$/, "");
}

async function refreshLive() {
  const live = await admin("lanes");
  $("lanes-body").replaceChildren(
    ...live.lanes.map((lane) =>
      el(
        "tr",
        {},
        cell(lane.lane, "th"),
        cell(lane.waiting),
        cell(lane.max_waiting ?? "none"),
        cell(lane.taken),
        cell(number(lane.drain_per_s)),
        cell(lane.estimated_wait_s === null || lane.estimated_wait_s === undefined ? "–" : seconds(lane.estimated_wait_s)),
        cell(lane.paused ? "yes" : "no"),
        cell(lane.rejected),
      ),
    ),
  );
  $("pools-body").replaceChildren(
    ...Object.entries(live.pools || {}).map(([pool, figures]) =>
      el(
        "tr",
        {},
        cell(pool, "th"),
        cell(figures.instances),
        cell(figures.healthy ? "yes" : "NO: its jobs wait for a decoder"),
      ),
    ),
  );
  const batches = Object.entries(live.decoders || {});
  $("batches-body").replaceChildren(
    ...(batches.length
      ? batches.map(([instance, batch]) =>
          el(
            "tr",
            {},
            cell(`${instance} (${batch.model || "darkroom-mini"}, ${batch.pool || "?"})`, "th"),
            cell(`${Math.round((batch.occupancy || 0) * 100)}%`),
            cell(`${batch.images} of ${batch.limit}`),
            cell(batch.pass_s ? `${number(batch.pass_s * 1000, 0)} ms` : "–"),
            cell(number(batch.images_per_s)),
          ),
        )
      : [el("tr", {}, el("td", { colSpan: 5, textContent: "No decoder reports a batch." }))]),
  );
  $("services-body").replaceChildren(
    ...Object.entries(live.services || {}).map(([name, service]) =>
      el(
        "tr",
        {},
        cell(name, "th"),
        cell(service.instances),
        cell(service.last_seen_s === null || service.last_seen_s === undefined ? "never" : `${number(service.last_seen_s, 1)} s ago`),
        cell(service.healthy ? "yes" : "NO"),
      ),
    ),
  );
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

// --- policies and rollouts ------------------------------------------------------------------

function policyInput(tier, field, value) {
  const label = `${tier} ${field.replaceAll("_", " ")}`;
  if (field === "max_quality") {
    const select = el("select", { name: field }, ...QUALITIES.map((q) => el("option", { value: q, textContent: q })));
    select.value = value;
    select.setAttribute("aria-label", label);
    return select;
  }
  const input =
    typeof value === "number"
      ? el("input", { type: "number", name: field, min: "0", step: "1", value: String(value) })
      : el("input", { type: "text", name: field, value: String(value ?? "") });
  input.setAttribute("aria-label", label);
  return input;
}

function renderPolicy(policy) {
  const tiers = Object.entries(policy.tiers);
  if (!tiers.length) return;
  const fields = Object.keys(tiers[0][1]);
  $("policy-head").replaceChildren(
    el("tr", {}, cell("Tier", "th"), ...fields.map((f) => cell(f.replaceAll("_", " "), "th")), el("th", {})),
  );
  $("policy-body").replaceChildren(
    ...tiers.map(([tier, values]) => {
      const inputs = fields.map((field) => policyInput(tier, field, values[field]));
      const save = el("button", { type: "button", textContent: "Save" });
      save.setAttribute("aria-label", `Save ${tier} tier`);
      save.addEventListener("click", () => saveTier(tier, values, inputs, save));
      return el("tr", {}, cell(tier, "th"), ...inputs.map((input) => el("td", {}, input)), el("td", {}, save));
    }),
  );
  const features = Object.entries(policy.rollouts || {});
  const rolloutTiers = tiers.map(([tier]) => tier);
  $("rollouts-head").replaceChildren(
    el("tr", {}, cell("Feature", "th"), ...rolloutTiers.map((t) => cell(t, "th"))),
  );
  $("rollouts-body").replaceChildren(
    ...features.map(([feature, percents]) =>
      el(
        "tr",
        {},
        cell(feature, "th"),
        ...rolloutTiers.map((tier) => {
          const input = el("input", { type: "number", min: "0", max: "100", step: "1", value: String(percents[tier] ?? 100) });
          input.setAttribute("aria-label", `${feature} rollout for ${tier} (percent)`);
          input.addEventListener("change", () => saveRollout(feature, tier, input));
          return el("td", {}, input);
        }),
      ),
    ),
  );
}

async function refreshPolicy(force = false) {
  const policy = await admin("policy");
  const shown = JSON.stringify(policy);
  // Leave the inputs alone while nothing changed, so an edit in progress is not overwritten.
  if (!force && shown === policyShown) return;
  if (!force && document.activeElement && $("policy").contains(document.activeElement)) return;
  policyShown = shown;
  renderPolicy(policy);
}

async function saveTier(tier, before, inputs, button) {
  const changes = {};
  for (const input of inputs) {
    const value = input.type === "number" ? Number(input.value) : input.value;
    if (value !== before[input.name]) changes[input.name] = value;
  }
  if (!Object.keys(changes).length) {
    say(`Nothing changed for the ${tier} tier.`, "ok");
    return;
  }
  button.disabled = true;
  try {
    await admin(`policy/tiers/${tier}`, { method: "PATCH", json: changes });
    say(`Saved the ${tier} tier: ${Object.entries(changes).map(([k, v]) => `${k} = ${v}`).join(", ")}.`, "ok");
    await refreshPolicy(true);
  } catch (error) {
    explain(error);
  } finally {
    button.disabled = false;
  }
}

async function saveRollout(feature, tier, input) {
  try {
    await admin(`rollouts/${feature}/${tier}`, { method: "PUT", json: { percent: Number(input.value) } });
    say(`Rollout of ${feature} for ${tier}: ${input.value}%.`, "ok");
    await refreshPolicy(true);
  } catch (error) {
    explain(error);
  }
}

// --- dead letters ------------------------------------------------------------------------------

async function refreshLetters() {
  const { data } = await admin("dead-letters");
  $("letters-empty").hidden = data.length > 0;
  $("letters-body").replaceChildren(
    ...data.map((letter) => {
      const replay = el("button", { type: "button", textContent: "Replay" });
      replay.setAttribute("aria-label", `Replay dead letter ${letter.offset}`);
      replay.addEventListener("click", () => replayLetters([letter.offset]));
      return el(
        "tr",
        {},
        cell(letter.offset, "th"),
        cell(letter.service),
        cell(letter.topic),
        cell(letter.reason),
        el("td", {}, el("code", { textContent: letter.value_preview || "" })),
        el("td", {}, replay),
      );
    }),
  );
}

async function replayLetters(offsets) {
  try {
    const { replayed } = await admin("dead-letters/replay", { json: offsets ? { offsets } : {} });
    say(`Replayed ${replayed} dead letter${replayed === 1 ? "" : "s"} to their topics.`, "ok");
  } catch (error) {
    explain(error);
  }
}

$("refresh-letters").addEventListener("click", () => refreshLetters().catch(explain));
$("replay-all").addEventListener("click", () => replayLetters(null));

// --- jobs ---------------------------------------------------------------------------------------

async function refreshJobs() {
  const status = $("job-status-filter").value;
  const { data } = await admin(`jobs?${new URLSearchParams(status ? { status, limit: "50" } : { limit: "50" })}`);
  $("jobs-body").replaceChildren(
    ...data.map((job) => {
      const link = el("a", { href: `#job-${job.id}`, textContent: job.id });
      link.addEventListener("click", (event) => {
        event.preventDefault();
        showJob(job.id);
      });
      const progress = job.progress ? `${job.progress.pass} of ${job.progress.total_passes}` : "–";
      return el(
        "tr",
        {},
        el("th", {}, link),
        cell(job.status),
        cell(job.tier),
        cell(progress),
        cell(job.prompt),
        cell(new Date(job.created_at * 1000).toLocaleString()),
      );
    }),
  );
}

async function showJob(jobId) {
  try {
    const job = await admin(`jobs/${jobId}`);
    for (const item of job.data || []) if (item.b64_json) item.b64_json = `(${item.b64_json.length} base64 characters)`;
    $("job-detail-title").textContent = `Job ${jobId}`;
    $("job-detail-body").textContent = JSON.stringify(job, null, 2);
    $("job-detail").hidden = false;
    $("job-detail").scrollIntoView({ block: "nearest" });
  } catch (error) {
    explain(error);
  }
}

$("job-status-filter").addEventListener("change", () => refreshJobs().catch(explain));

// --- sign-in and the refresh loops -----------------------------------------------------------------

function every(ms, refresh) {
  let stopped = false;
  const loop = async () => {
    if (stopped) return;
    try {
      await refresh();
    } catch (error) {
      explain(error);
    }
    if (!stopped) timers.push(setTimeout(loop, ms));
  };
  loop();
  timers.push({ stop: () => (stopped = true) });
}

function stopLoops() {
  for (const timer of timers) {
    if (timer && timer.stop) timer.stop();
    else clearTimeout(timer);
  }
  timers = [];
}

async function open(candidate) {
  try {
    await call("/v1/admin/policy", { key: candidate });
  } catch (error) {
    say(error instanceof ApiError && error.status === 401 ? `That token was refused: ${error.message}` : error.message);
    return false;
  }
  token = candidate;
  sessionStorage.setItem(TOKEN, token);
  say("");
  $("signin").hidden = true;
  for (const id of ["console", "nav", "who"]) $(id).hidden = false;
  every(LIVE_MS, refreshLive);
  every(SLOW_MS, () => refreshPolicy(false));
  every(SLOW_MS, refreshJobs);
  refreshLetters().catch(explain);
  return true;
}

function signOut(why = "") {
  stopLoops();
  token = null;
  policyShown = "";
  sessionStorage.removeItem(TOKEN);
  $("signin").hidden = false;
  for (const id of ["console", "nav", "who"]) $(id).hidden = true;
  say(why);
}

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (await open($("token").value.trim())) $("token").value = "";
});
$("sign-out").addEventListener("click", () => signOut("Signed out."));

if (token) open(token).then((ok) => ok || signOut());
else signOut();
