// pg-boss on PostgreSQL (DATABASE_URL), with LISTEN/NOTIFY wake-ups on.
import { PgBoss } from "pg-boss";
import { run, CONCURRENCY } from "./harness.mjs";

const boss = new PgBoss({ connectionString: process.env.DATABASE_URL, useListenNotify: true, max: 40 });
boss.on("error", (error) => console.error(error));
await boss.start();
const name = "emit-bench";
await boss.createQueue(name, { notify: true });

await run("pg-boss", "PostgreSQL", {
  path: "work()",
  createBulk: (jobs) => boss.insert(name, jobs.map((data) => ({ data }))),
  createOne: (data) => boss.send(name, data),
  async startWorkers(onJob) {
    // pg-boss's fastest shape for concurrency 32: 4 fetch loops taking
    // batches of 8, fetching on at once while batches come back full, and
    // NOTIFY wake-ups when idle. It records completions when the handler
    // resolves and has no event for that: completion is taken then.
    await boss.work(
      name,
      {
        localConcurrency: CONCURRENCY / 8,
        batchSize: 8,
        burstWhenBatchFull: true,
        pollingIntervalSeconds: 0.5,
        notifyPollingIntervalSeconds: 0.5,
      },
      async (jobs) => {
        for (const job of jobs) onJob.started(job.data);
        queueMicrotask(() => jobs.forEach((job) => onJob.completed(job.data)));
      },
    );
  },
  stopWorkers: () => boss.offWork(name),
  close: () => boss.stop({ graceful: false }),
});
