// graphile-worker on PostgreSQL (DATABASE_URL).
import pg from "pg";
import { run as runWorker, makeWorkerUtils } from "graphile-worker";
import { run, CONCURRENCY } from "./harness.mjs";

const connectionString = process.env.DATABASE_URL;
const utils = await makeWorkerUtils({ connectionString });
await utils.migrate();
let runner;

// graphile-worker emits `job:complete` when it starts the job's completion
// (a DELETE it does not await), before PostgreSQL has it; the harness wants
// the moment the completion is recorded, as the other systems report it. So
// the worker gets a pool whose clients tell when a completion's DELETE has
// returned (autocommit, `synchronous_commit` on: durable), and for which jobs.
const payloads = new Map();
const completing = /delete from \S+\._private_jobs/i;
const pgPool = new pg.Pool({ connectionString, max: CONCURRENCY + 4 });
pgPool.on("error", (error) => console.error(error));

await run("graphile-worker", "PostgreSQL", {
  path: "run()",
  createBulk: (jobs) => utils.addJobs(jobs.map((payload) => ({ identifier: "noop", payload }))),
  createOne: (payload) => utils.addJob("noop", payload),
  async startWorkers(onJob) {
    pgPool.on("connect", (client) => {
      client.on("error", (error) => console.error(error));
      const query = client.query.bind(client);
      client.query = (config, ...rest) => {
        const result = query(config, ...rest);
        const text = typeof config === "string" ? config : config?.text;
        if (completing.test(text ?? "") && typeof result?.then === "function") {
          const ids = [config.values?.[0] ?? []].flat();
          result.then(() => {
            for (const id of ids) {
              const payload = payloads.get(String(id));
              payloads.delete(String(id));
              if (payload !== undefined) onJob.completed(payload);
            }
          }, () => {});
        }
        return result;
      };
    });
    runner = await runWorker({
      pgPool,
      concurrency: CONCURRENCY,
      noHandleSignals: true,
      pollInterval: 500,
      taskList: {
        noop: async (payload, helpers) => {
          payloads.set(String(helpers.job.id), payload);
          onJob.started(payload);
        },
      },
    });
  },
  stopWorkers: () => runner.stop(),
  async close() {
    await utils.release();
    await pgPool.end();
  },
});
