// The dashboard's browser flows, in Debian's Chromium driven by
// playwright-core, against a real emit server started by
// tests/api/dashboard_browser.rs. That harness passes the server's address
// and admin key in the environment, restarts the server when this script
// prints "restart" (and answers "restarted" on stdin), and fails the test
// when this script exits non-zero.
//
// Every wait is on an observable condition in the page or the API.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";

const BASE = process.env.EMIT_URL;
const ADMIN = process.env.EMIT_ADMIN_KEY;
const SHOTS = process.env.EMIT_SCREENSHOTS;
const WAIT_MS = 20_000;

if (!BASE || !ADMIN) throw new Error("EMIT_URL and EMIT_ADMIN_KEY must be set");

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function until(what, probe) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function rest(method, path, key, body, extraHeaders = {}) {
  const headers = { ...extraHeaders };
  if (key) headers["x-api-key"] = key;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${BASE}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

const lines = createInterface({ input: process.stdin });
const answers = lines[Symbol.asyncIterator]();
async function restartServer() {
  console.log("restart");
  const { value } = await answers.next();
  check(value === "restarted", `the harness answered ${value}`);
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  // Notices fade on their own; a screenshot shows the page without them.
  await page.evaluate(() => document.getElementById("toast").replaceChildren());
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: name === "job" });
}

const count = (page, status) => page.locator(`main [data-count="${status}"] b`).first().textContent();
const rowCount = (page) => page.locator("#jobs tr").count();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, timezoneId: "Europe/Berlin" });
  const page = await context.newPage();
  page.on("pageerror", (error) => { console.error(`page error: ${error.message}`); process.exitCode = 1; });
  page.on("dialog", (dialog) => dialog.accept());

  // --- Without a session nothing works, and a wrong key is refused. ---
  check((await rest("GET", "/dashboard/api/session")).status === 401, "no session answers 401");
  await page.goto(BASE);
  await page.locator("#key").waitFor();
  await shot(page, "sign-in");
  await page.fill("#key", "emit_not_a_key");
  await page.click("button[type=submit]");
  await until("the refusal", async () => (await page.locator("[role=alert]").textContent()).includes("invalid API key"));

  // --- Sign in. ---
  await page.fill("#key", ADMIN);
  await page.click("button[type=submit]");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const [cookie] = (await context.cookies()).filter((c) => c.name === "emit_session");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");
  check(!cookie.value.includes(ADMIN), "the cookie is not the key");
  await page.getByText("No spaces yet").waitFor();

  // --- Forged requests: the cookie alone, or a wrong CSRF token, change nothing. ---
  const forged = await page.evaluate(async () => {
    const attempt = async (headers) => (await fetch("/api/v1/spaces", {
      method: "POST", headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ name: "forged" }),
    })).status;
    return [await attempt({}), await attempt({ "x-csrf-token": "0".repeat(64) })];
  });
  check(forged[0] === 403 && forged[1] === 403, `forged requests answered ${forged}`);
  const crossSite = await rest("POST", "/api/v1/spaces", null, { name: "cross" },
    { cookie: `emit_session=${cookie.value}`, origin: "https://evil.example" });
  check(crossSite.status === 403, `a cross-site request with the cookie answered ${crossSite.status}`);
  check((await rest("GET", "/api/v1/spaces", ADMIN)).body.length === 0, "no forged space was created");

  // --- Create a space. ---
  await page.getByRole("link", { name: "Spaces" }).click();
  await page.fill("#space-name", "production");
  await page.getByRole("button", { name: "Create space" }).click();
  await page.getByRole("heading", { name: "production" }).waitFor();
  const spaceId = decodeURIComponent(page.url().split("#/spaces/")[1].split("/")[0]);
  check(spaceId.length > 10, "the new space's page is open");
  await page.locator("#live.on").waitFor();

  // --- Create a token; its key is shown once. ---
  await page.getByRole("link", { name: "Tokens" }).click();
  await page.fill("#token-name", "worker-1");
  await page.click("#worker-preset");
  await page.getByRole("button", { name: "Create token" }).click();
  const workerKey = await (await page.locator("[data-secret]").first()).textContent();
  check(workerKey.startsWith("emit_"), "the new key is shown");
  const listed = await page.locator("#tokens [data-token] td:first-child").allTextContents();
  check(listed.includes("worker-1"), `the token is listed (${listed})`);
  check((await page.locator("#public-token code").textContent()).startsWith("emit_"), "the public token is shown");
  await shot(page, "tokens");
  const polled = await rest("POST", `/api/v1/spaces/${spaceId}/jobs/poll`, workerKey, {});
  check(polled.status === 200, "the shown key works as a worker key");
  await page.getByRole("link", { name: "Settings" }).click();
  await page.getByRole("link", { name: "Tokens" }).click();
  await page.locator("#tokens").waitFor();
  check(await page.locator("[data-secret]").count() === 0, "the key is not shown again");
  const producer = (await rest("POST", `/api/v1/spaces/${spaceId}/tokens`, ADMIN,
    { name: "producer", scopes: ["jobs:create", "jobs:read"] })).body.key;

  // --- Jobs created through the API appear live with the right counts. ---
  await page.getByRole("link", { name: "Jobs" }).click();
  await page.locator("#live.on").waitFor();
  const created = [];
  for (const name of ["send-email", "send-email", "send-email", "resize", "resize"]) {
    const job = await rest("POST", `/api/v1/spaces/${spaceId}/jobs`, producer, { name, payload: { to: "a@example.com" } });
    check(job.status === 201, `create answered ${job.status}`);
    created.push(job.body.id);
  }
  await until("five live rows", async () => (await rowCount(page)) === 5);
  await until("pending count 5", async () => (await count(page, "pending")) === "5");

  // --- Filter by name, then by status. ---
  await page.fill("#name-filter", "resize");
  await page.getByRole("button", { name: "Filter" }).click();
  await until("two resize rows", async () => (await rowCount(page)) === 2
    && (await page.locator("#jobs tr td:nth-child(2)").allTextContents()).every((n) => n === "resize"));
  const delivered = (await rest("POST", `/api/v1/spaces/${spaceId}/jobs/poll`, workerKey, { names: ["send-email"] })).body.jobs[0];
  await page.goto(`${BASE}/#/spaces/${spaceId}/jobs`);
  await page.selectOption("#status-filter", "delivered");
  await page.getByRole("button", { name: "Filter" }).click();
  await until("one delivered row", async () => (await rowCount(page)) === 1
    && (await page.locator("#jobs tr").first().getAttribute("data-job")) === delivered.id);
  await until("delivered count 1", async () => (await count(page, "delivered")) === "1");

  // --- One job: progress bars, live log tail, search, level, older pages. ---
  await rest("POST", `/api/v1/jobs/${delivered.id}/ack`, workerKey, {});
  const logLines = Array.from({ length: 150 }, (_, i) => ({
    level: i % 10 === 0 ? "error" : i % 3 === 0 ? "warn" : "info",
    message: i === 7 ? "found the needle here" : `line ${i}`,
  }));
  const appended = await rest("POST", `/api/v1/jobs/${delivered.id}/logs`, workerKey, { lines: logLines });
  check(appended.status < 300, `log append answered ${appended.status}: ${JSON.stringify(appended.body)}`);
  await page.click(`#jobs a[href*="${delivered.id}"]`);
  await page.getByRole("heading", { name: /send-email/ }).waitFor();
  await page.locator("#live.on").waitFor();
  await rest("POST", `/api/v1/jobs/${delivered.id}/progress`, workerKey, {
    percent: 55, message: "Transcoding",
    subProgress: { download: { percent: 100, message: "Source fetched" }, transcode: { percent: 40, message: "Encoding" } },
  });
  await until("the transcode bar at 40", async () =>
    (await page.locator('[data-stage="transcode"] [role=progressbar]').getAttribute("aria-valuenow")) === "40");
  check(await page.locator('[data-stage="download"] [role=progressbar]').getAttribute("aria-valuenow") === "100", "the download bar is full");
  await until("the progress event", async () => (await page.locator('#events [data-type="progress"]').count()) === 1);
  await page.getByRole("tab", { name: "Logs" }).click();
  await until("the newest 100 lines", async () => (await page.locator("#log-lines div").count()) === 100);
  check((await page.locator("#log-lines div").last().textContent()).includes("line 149"), "the newest line is last");
  await page.click("#log-older");
  await until("all 150 lines", async () => (await page.locator("#log-lines div").count()) === 150);
  check((await page.locator("#log-lines div").first().textContent()).includes("line 0"), "the oldest line is first");
  await rest("POST", `/api/v1/jobs/${delivered.id}/logs`, workerKey, { lines: [{ level: "info", message: "tailed live" }] });
  await until("the live line", async () => (await page.locator("#log-lines div").last().textContent()).includes("tailed live"));
  await shot(page, "job");
  await page.fill("#log-search", "needle");
  await until("one matching line", async () => (await page.locator("#log-lines div").count()) === 1
    && (await page.locator("#log-lines div").first().textContent()).includes("needle"));
  await page.fill("#log-search", "");
  await page.selectOption("#log-level", "error");
  await until("only error lines", async () => {
    const texts = await page.locator("#log-lines div").allTextContents();
    return texts.length === 15 && texts.every((text) => text.includes("ERROR"));
  });

  // --- Kill a job, then retry it. ---
  const victim = created[3];
  await page.goto(`${BASE}/#/jobs/${victim}`);
  await page.locator("#kill").click();
  await until("the killed status", async () => (await page.locator("h1 [data-status]").getAttribute("data-status")) === "killed");
  check((await rest("GET", `/api/v1/jobs/${victim}`, ADMIN)).body.status === "killed", "the job is killed on the server");
  await page.locator("#retry").click();
  await until("pending again", async () => (await page.locator("h1 [data-status]").getAttribute("data-status")) === "pending");

  // --- Pause the space's dispatch from its jobs page, then resume. ---
  await page.goto(`${BASE}/#/spaces/${spaceId}/jobs`);
  await page.click("#pause");
  await page.locator("#paused-note").waitFor({ state: "visible" });
  check((await rest("GET", `/api/v1/spaces/${spaceId}`, ADMIN)).body.paused === true, "the space is paused");
  check((await rest("POST", `/api/v1/spaces/${spaceId}/jobs/poll`, workerKey, {})).body.jobs.length === 0, "a paused space hands out nothing");
  await page.click("#pause");
  await page.locator("#paused-note").waitFor({ state: "hidden" });
  check((await rest("GET", `/api/v1/spaces/${spaceId}`, ADMIN)).body.paused === false, "the space is resumed");

  // --- Restart the server: the page reconnects, the session survives. ---
  await page.goto(`${BASE}/#/spaces/${spaceId}/jobs`);
  await page.locator("#live.on").waitFor();
  await until("the counts", async () => /^\d+$/.test(await count(page, "pending")));
  await shot(page, "jobs");
  await restartServer();
  await page.locator("#live.on").waitFor({ timeout: WAIT_MS });
  const late = (await rest("POST", `/api/v1/spaces/${spaceId}/jobs`, producer, { name: "after-restart" })).body.id;
  await until("the job created after the restart", async () => (await page.locator(`#jobs tr[data-job="${late}"]`).count()) === 1);
  await until("pending count after the restart", async () => (await count(page, "pending")) === "5");

  // --- A keyed job held back by its key's limit says why (in a space of
  // its own, so the counts checked below stay as they are). ---
  const keyed = (await rest("POST", "/api/v1/spaces", ADMIN, { name: "keyed" })).body.id;
  check((await rest("PATCH", `/api/v1/spaces/${keyed}`, ADMIN, { concurrency: { names: { sync: 1 } } })).status === 200, "a limit is set");
  const syncs = (await rest("POST", `/api/v1/spaces/${keyed}/jobs`, ADMIN,
    [{ name: "sync", concurrencyKey: "acme" }, { name: "sync", concurrencyKey: "acme" }])).body.map((job) => job.id);
  const leased = (await rest("POST", `/api/v1/spaces/${keyed}/jobs/poll`, ADMIN, { count: 5 })).body.jobs;
  check(leased.length === 1, `one lease for the key (${leased.length})`);
  const held = syncs.find((id) => id !== leased[0].id);
  await page.goto(`${BASE}/#/jobs/${held}?space=${keyed}`);
  await until("the waiting reason", async () => (await page.locator("dd", { hasText: "key at its limit" }).count()) === 1);
  check((await page.locator("dd", { hasText: "acme" }).count()) === 1, "the concurrency key is shown");
  await shot(page, "job-waiting");
  await page.goto(`${BASE}/#/spaces/${spaceId}/jobs`);
  await page.locator("#live.on").waitFor();

  // --- Settings: push wake-up and the webhook signing secret. ---
  await page.getByRole("link", { name: "Settings" }).click();
  await page.fill("#push-url", "https://worker.example/wake");
  await page.fill("#push-names", "send-email, resize");
  await page.getByRole("button", { name: "Save push settings" }).click();
  await until("push saved", async () => (await rest("GET", `/api/v1/spaces/${spaceId}`, ADMIN)).body.push?.names?.length === 2);
  await page.locator("#rotate-secret").click();
  const secret = await page.locator("#webhook-secret [data-secret]").textContent();
  check(secret.startsWith("whsec_"), "the signing secret is shown once");
  await page.fill("#retain-completed", "2");
  await page.fill("#retain-dead", "");
  await page.getByRole("button", { name: "Save retention" }).click();
  await until("retention saved", async () =>
    (await rest("GET", `/api/v1/spaces/${spaceId}`, ADMIN)).body.retention?.completed === 2 * 86400);
  await shot(page, "settings");

  // --- Home: every space with live counts. ---
  await page.getByRole("link", { name: "Home" }).click();
  await until("the space card's pending count", async () =>
    (await page.locator(`[data-space="${spaceId}"] [data-count="pending"] b`).textContent()) === "5");
  await shot(page, "home");

  // --- At 375 px wide the jobs page still works. ---
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(`${BASE}/#/spaces/${spaceId}/jobs`);
  await until("rows on a narrow screen", async () => (await rowCount(page)) === 6);
  await page.locator("#live.on").waitFor();
  await until("the counts", async () => /^\d+$/.test(await count(page, "pending")));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the page scrolls sideways by ${overflow}px at 375px`);
  await shot(page, "jobs-mobile");
  await page.setViewportSize({ width: 1280, height: 860 });

  // --- Sign out: the old session no longer works anywhere. ---
  await page.click("#sign-out");
  await page.locator("#key").waitFor();
  const stale = { cookie: `emit_session=${cookie.value}` };
  check((await rest("GET", "/dashboard/api/session", null, undefined, stale)).status === 401, "the signed-out session is refused");
  check((await rest("GET", "/api/v1/spaces", null, undefined, stale)).status === 401, "the signed-out session reads nothing");

  // --- A jobs:read key signs in to a read-only view of its own space. ---
  const reader = (await rest("POST", `/api/v1/spaces/${spaceId}/tokens`, ADMIN, { name: "reader", scopes: ["jobs:read", "jobs:kill"] })).body.key;
  await page.fill("#key", reader);
  await page.click("button[type=submit]");
  await page.getByText("Read-only view of one space").waitFor();
  check(await page.getByRole("link", { name: "Tokens" }).count() === 0, "no Tokens page for a read-only session");
  await page.getByRole("link", { name: "Home" }).click();
  await until("its space's live counts on Home", async () =>
    (await page.locator(`[data-space="${spaceId}"] [data-count="pending"] b`).textContent()) === "5");
  await page.getByRole("link", { name: "Jobs" }).click();
  await until("its jobs", async () => (await rowCount(page)) === 6);
  await page.goto(`${BASE}/#/jobs/${created[0]}`);
  await page.getByRole("heading", { name: /send-email/ }).waitFor();
  check(await page.locator("#kill").count() === 0, "no Kill button in a read-only view");
  const readOnlyKill = await page.evaluate(async ({ id }) => {
    const session = await (await fetch("/dashboard/api/session")).json();
    return (await fetch(`/api/v1/jobs/${id}/kill`, { method: "POST", headers: { "x-csrf-token": session.csrfToken } })).status;
  }, { id: created[0] });
  check(readOnlyKill === 403, `a read-only session's kill answered ${readOnlyKill}`);

  console.log("dashboard flows passed");
} finally {
  await browser.close();
  lines.close();
}
