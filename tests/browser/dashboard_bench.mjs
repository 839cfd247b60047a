// The browser half of `bench/dashboard.rs`: signs in, opens a space's jobs
// page in headless Chromium, and measures while the harness drives events:
// - event to DOM: for every job row the page adds, the time from the job's
//   creation (its `createdAt`, the commit that published the event) to the
//   moment the row is in the DOM (a MutationObserver), same clock;
// - the longest main-thread task (PerformanceObserver, `longtask`);
// - at the end, the page's counts against the server's.
// Protocol on stdio: prints "ready" once measuring; reads "done" when the
// load has ended; prints one JSON line with the figures.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const BASE = process.env.EMIT_URL;
const ADMIN = process.env.EMIT_ADMIN_KEY;
const SPACE = process.env.EMIT_SPACE;
const STATUSES = ["scheduled", "pending", "delivered", "running", "completed", "dead", "killed"];

const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function serverCounts() {
  const counts = {};
  for (const status of STATUSES) {
    const response = await fetch(`${BASE}/api/v1/spaces/${SPACE}/jobs?status=${status}&limit=1`, {
      headers: { "x-api-key": ADMIN },
    });
    counts[status] = Number(response.headers.get("x-total-count"));
  }
  return counts;
}

async function pageCounts(page) {
  return page.evaluate((statuses) => Object.fromEntries(statuses.map((status) => [
    status, Number(document.querySelector(`main [data-count="${status}"] b`)?.textContent),
  ])), STATUSES);
}

try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  await page.goto(BASE);
  await page.fill("#key", ADMIN);
  await page.click("button[type=submit]");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.goto(`${BASE}/#/spaces/${SPACE}/jobs`);
  await page.locator("#live.on").waitFor();
  await page.evaluate(() => {
    window.benchLatencies = [];
    window.benchLongest = 0;
    new PerformanceObserver((list) => {
      for (const task of list.getEntries()) window.benchLongest = Math.max(window.benchLongest, task.duration);
    }).observe({ type: "longtask", buffered: true });
    new MutationObserver((records) => {
      const now = performance.timeOrigin + performance.now();
      for (const record of records) {
        for (const node of record.addedNodes) {
          const created = node.dataset && node.dataset.job && node.querySelector("time[datetime]");
          if (created) window.benchLatencies.push(now - Date.parse(created.getAttribute("datetime")));
        }
      }
    }).observe(document.getElementById("jobs"), { childList: true });
  });
  console.log("ready");
  const { value } = await lines.next();
  if (value !== "done") throw new Error(`expected done, got ${value}`);

  // The page has caught up once its counts equal the server's (both settle
  // within a moment of the last commit).
  const expected = await serverCounts();
  const deadline = Date.now() + 10_000;
  let shown = await pageCounts(page);
  while (JSON.stringify(shown) !== JSON.stringify(expected) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    shown = await pageCounts(page);
  }
  const { latencies, longest } = await page.evaluate(() => ({ latencies: window.benchLatencies, longest: window.benchLongest }));
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  console.log(JSON.stringify({
    rows: latencies.length,
    p50: at(0.5), p99: at(0.99), max: latencies[latencies.length - 1],
    longestTask: longest,
    countsEqual: JSON.stringify(shown) === JSON.stringify(expected),
    pageCounts: shown, serverCounts: expected,
  }));
} finally {
  await browser.close();
  input.close();
}
