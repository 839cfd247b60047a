// The two workloads of bench/run, shared by the peers' adapters so that
// every peer runs exactly the same load. An adapter provides:
//   createBulk(jobs)       create these jobs (an array of 100) durably
//   createOne(data)        create one job
//   startWorkers(onJob)    start consumers of total concurrency 32; call
//                          onJob.started(data) when a job's handler begins
//                          and onJob.completed(data) when the library has
//                          recorded its completion
//   stopWorkers(), close()
// Prints one line `RESULT {...}` for bench/run to tabulate.
import { performance } from "node:perf_hooks";

export const JOBS = 20_000;
export const BATCH = 100;
export const PRODUCERS = 4;
export const CONCURRENCY = 32;
const SINGLES = 1000;
const SINGLES_PER_SECOND = 100;

async function createAll(adapter) {
  let next = 0;
  const batches = JOBS / BATCH;
  const producer = async () => {
    while (next < batches) {
      next += 1;
      const jobs = Array.from({ length: BATCH }, (_, i) => ({ i }));
      await adapter.createBulk(jobs);
    }
  };
  await Promise.all(Array.from({ length: PRODUCERS }, producer));
}

function percentile(samples, q) {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
}

export async function run(system, storage, adapter) {
  let completed = 0;
  let waiter = null;
  const starts = new Map();
  const completions = new Map();
  const onJob = {
    started(data) {
      if (data && data.sent !== undefined) starts.set(data.n, performance.now() - data.sent);
    },
    completed(data) {
      if (data && data.sent !== undefined) completions.set(data.n, performance.now() - data.sent);
      completed += 1;
      if (waiter && completed >= waiter.target) {
        waiter.resolve();
        waiter = null;
      }
    },
  };
  const until = (target) =>
    completed >= target ? Promise.resolve() : new Promise((resolve) => (waiter = { target, resolve }));

  const phase = { name: "create only" };
  const progress = setInterval(() => console.error(`${system}: ${phase.name}, ${completed} completed`), 5000);
  progress.unref();
  // A, create only: nobody consumes.
  let started = performance.now();
  await createAll(adapter);
  const createOnly = JOBS / ((performance.now() - started) / 1000);
  // Drain that backlog (not timed), then A end to end: create while consuming.
  phase.name = "draining";
  await adapter.startWorkers(onJob);
  await until(JOBS);
  phase.name = "end to end";
  started = performance.now();
  await createAll(adapter);
  await until(2 * JOBS);
  const endToEnd = JOBS / ((performance.now() - started) / 1000);

  // B: single creates at 100/s into idle workers.
  phase.name = "single creates";
  await new Promise((resolve) => setTimeout(resolve, 500));
  const base = completed;
  const t0 = performance.now();
  for (let n = 0; n < SINGLES; n++) {
    const due = t0 + (n * 1000) / SINGLES_PER_SECOND;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    adapter.createOne({ n, sent: performance.now() });
  }
  await Promise.race([until(base + SINGLES), new Promise((resolve) => setTimeout(resolve, 30_000))]);
  const dispatch = [...starts.values()];
  const completion = [...completions.values()];
  await adapter.stopWorkers();
  await adapter.close();
  const result = {
    system,
    path: adapter.path,
    storage,
    createOnly,
    endToEnd,
    dispatchP50: percentile(dispatch, 0.5),
    dispatchP99: percentile(dispatch, 0.99),
    completionP50: percentile(completion, 0.5),
    completionP99: percentile(completion, 0.99),
    singles: completion.length,
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
  // Client libraries may keep sockets or timers alive after closing.
  process.exit(0);
}
