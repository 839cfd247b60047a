// Prints bench/run's results as a table of medians over the repetitions
// (each row: system, path and storage), then emit's ratio to each peer:
// emit's best configuration per column against the peer (above 1: emit
// ahead; for latencies, peer / emit).
import { readFileSync } from "node:fs";

const results = readFileSync(process.argv[2], "utf8")
  .split("\n")
  .filter((line) => line.startsWith("RESULT "))
  .map((line) => JSON.parse(line.slice(7)));

const metrics = ["createOnly", "endToEnd", "dispatchP50", "dispatchP99", "completionP50", "completionP99"];
const median = (values) => {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
// One row per configuration, in the order first seen; each metric the
// median of its runs.
const groups = new Map();
for (const r of results) {
  const key = `${r.system}|${r.path}|${r.storage}`;
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(r);
}
const rowsOf = [...groups.values()].map((runs) => {
  const row = { system: runs[0].system, path: runs[0].path, storage: runs[0].storage, runs: runs.length };
  for (const metric of metrics) row[metric] = median(runs.map((r) => r[metric]));
  row.endToEndRuns = runs.map((r) => r.endToEnd);
  return row;
});

const fixed = (value, digits) => (Number.isFinite(value) ? value.toFixed(digits) : "-");
const rows = [
  ["system", "path", "storage", "runs", "A create-only jobs/s", "A end-to-end jobs/s (each run)", "B dispatch p50/p99 ms", "B completion p50/p99 ms"],
  ...rowsOf.map((r) => [
    r.system,
    r.path,
    r.storage,
    String(r.runs),
    fixed(r.createOnly, 0),
    `${fixed(r.endToEnd, 0)} (${r.endToEndRuns.map((v) => fixed(v, 0)).join(", ")})`,
    `${fixed(r.dispatchP50, 2)} / ${fixed(r.dispatchP99, 2)}`,
    `${fixed(r.completionP50, 2)} / ${fixed(r.completionP99, 2)}`,
  ]),
];
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
const line = (row) => `| ${row.map((cell, column) => cell.padEnd(widths[column])).join(" | ")} |`;
console.log(`medians of ${Math.max(...rowsOf.map((r) => r.runs))} interleaved runs`);
console.log(line(rows[0]));
console.log(`|${widths.map((width) => "-".repeat(width + 2)).join("|")}|`);
rows.slice(1).forEach((row) => console.log(line(row)));

const higher = (a, b) => a > b;
const lower = (a, b) => a < b;
const columns = [
  ["create-only", "createOnly", higher],
  ["end-to-end", "endToEnd", higher],
  ["dispatch p50", "dispatchP50", lower],
  ["dispatch p99", "dispatchP99", lower],
  ["completion p50", "completionP50", lower],
  ["completion p99", "completionP99", lower],
];
const ratio = (ours, peer, key, better) =>
  better === higher ? ours[key] / peer[key] : peer[key] / ours[key];
// Keyed runs measure the cost of keys, not emit's best.
const emit = rowsOf.filter((r) => r.system === "emit" && !/keys/.test(r.path));
const best = (rows, key, better) => rows.reduce((found, r) => (better(r[key], found[key]) ? r : found), rows[0]);
console.log("\nemit's best configuration per column / peer (above 1.00: emit leads):");
for (const peer of rowsOf.filter((r) => r.system !== "emit")) {
  const ratios = columns.map(([label, key, better]) => {
    const ours = best(emit, key, better);
    return `${label} ${fixed(ratio(ours, peer, key, better), 2)}x (${ours.path}, ${ours.storage})`;
  });
  console.log(`- vs ${peer.system}: ${ratios.join("; ")}`);
}

// Like for like: each emit path against each peer, end to end and p99.
console.log("\neach emit path / peer, end to end; dispatch p99; completion p99:");
for (const ours of rowsOf.filter((r) => r.system === "emit")) {
  const against = rowsOf
    .filter((r) => r.system !== "emit")
    .map((peer) =>
      `${peer.system} ${["endToEnd", "dispatchP99", "completionP99"]
        .map((key) => fixed(ratio(ours, peer, key, key === "endToEnd" ? higher : lower), 2) + "x")
        .join(" ")}`,
    );
  console.log(`- ${ours.path}, ${ours.storage}: ${against.join("; ")}`);
}

const fanouts = readFileSync(process.argv[2], "utf8")
  .split("\n")
  .filter((line) => line.startsWith("FANOUT "))
  .map((line) => JSON.parse(line.slice(7)));
if (fanouts.length > 0) {
  const each = (key) => fanouts.map((f) => fixed(f[key], 1)).join(", ");
  console.log(
    `\nWebSocket fan-out, ${fanouts[0].subscribers} watchers of one job, delivery latency ms (median of ${fanouts.length}): ` +
      `p50 ${fixed(median(fanouts.map((f) => f.p50)), 1)} (${each("p50")}), ` +
      `p99 ${fixed(median(fanouts.map((f) => f.p99)), 1)} (${each("p99")}), ` +
      `max ${fixed(median(fanouts.map((f) => f.max)), 1)}`,
  );
}
