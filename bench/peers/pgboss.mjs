// pg-boss on PostgreSQL (DATABASE_URL), with LISTEN/NOTIFY wake-ups on.
import { createRequire } from "node:module";
import pg from "pg";
import { PgBoss } from "pg-boss";
import { run, CONCURRENCY } from "./harness.mjs";

// Completions are seen on the `pg` client class that pg-boss uses (below),
// which must be this one: otherwise none would be seen and the run would
// wait forever.
const resolvePg = (from) => createRequire(from).resolve("pg");
if (resolvePg(import.meta.resolve("pg-boss")) !== resolvePg(import.meta.url)) {
  throw new Error("pg-boss resolves another copy of pg than this adapter");
}

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
    // NOTIFY wake-ups when idle. It records a batch's completion once the
    // handler resolves and has no event for it, so the client that pg-boss
    // (and only it, in this process) uses tells when that UPDATE returned
    // (autocommit, `synchronous_commit` on: durable), and for which jobs.
    const payloads = new Map();
    const query = pg.Client.prototype.query;
    pg.Client.prototype.query = function (config, ...rest) {
      const text = typeof config === "string" ? config : config?.text ?? "";
      const values = typeof config === "string" ? rest[0] : config?.values;
      if (!/SET completed_on/.test(text) || !Array.isArray(values?.[1])) return query.call(this, config, ...rest);
      const recorded = () => {
        for (const id of values[1]) {
          const payload = payloads.get(id);
          payloads.delete(id);
          if (payload !== undefined) onJob.completed(payload);
        }
      };
      const callback = rest.at(-1);
      if (typeof callback === "function") {
        rest[rest.length - 1] = (error, result) => {
          if (!error) recorded();
          callback(error, result);
        };
        return query.call(this, config, ...rest);
      }
      const result = query.call(this, config, ...rest);
      result?.then?.(recorded, () => {});
      return result;
    };
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
        for (const job of jobs) {
          payloads.set(job.id, job.data);
          onJob.started(job.data);
        }
      },
    );
  },
  stopWorkers: () => boss.offWork(name),
  close: () => boss.stop({ graceful: false }),
});
