// BullMQ on Redis (REDIS_URL, default redis://127.0.0.1:6379).
import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { run, CONCURRENCY } from "./harness.mjs";

const url = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
// Workers block on Redis: BullMQ wants no per-request retry limit there.
const connection = () => new Redis(url, { maxRetriesPerRequest: null });
const name = `emit-bench-${Date.now()}`;
const queue = new Queue(name, { connection: connection() });
let worker;

await run("BullMQ", process.env.REDIS_STORAGE ?? "Redis", {
  path: "Worker",
  createBulk: (jobs) => queue.addBulk(jobs.map((data) => ({ name: "noop", data, opts: { removeOnComplete: true } }))),
  createOne: (data) => queue.add("ping", data, { removeOnComplete: true }),
  async startWorkers(onJob) {
    worker = new Worker(name, async (job) => onJob.started(job.data), { connection: connection(), concurrency: CONCURRENCY });
    worker.on("completed", (job) => onJob.completed(job.data));
    await worker.waitUntilReady();
  },
  stopWorkers: () => worker.close(),
  async close() {
    await queue.obliterate({ force: true });
    await queue.close();
  },
});
