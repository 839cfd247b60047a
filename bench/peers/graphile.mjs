// graphile-worker on PostgreSQL (DATABASE_URL).
import { run as runWorker, makeWorkerUtils } from "graphile-worker";
import { run, CONCURRENCY } from "./harness.mjs";

const connectionString = process.env.DATABASE_URL;
const utils = await makeWorkerUtils({ connectionString });
await utils.migrate();
let runner;

await run("graphile-worker", "PostgreSQL", {
  path: "run()",
  createBulk: (jobs) => utils.addJobs(jobs.map((payload) => ({ identifier: "noop", payload }))),
  createOne: (payload) => utils.addJob("noop", payload),
  async startWorkers(onJob) {
    runner = await runWorker({
      connectionString,
      concurrency: CONCURRENCY,
      noHandleSignals: true,
      pollInterval: 500,
      maxPoolSize: CONCURRENCY + 4,
      taskList: { noop: async (payload) => onJob.started(payload) },
    });
    runner.events.on("job:complete", ({ job, error }) => {
      if (!error) onJob.completed(job.payload);
    });
  },
  stopWorkers: () => runner.stop(),
  close: () => utils.release(),
});
