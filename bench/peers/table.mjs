// Prints bench/run's results as a table, then emit's ratio to each peer:
// emit's best configuration per column against the peer (above 1: emit
// ahead; for latencies, peer / emit).
import { readFileSync } from "node:fs";

const results = readFileSync(process.argv[2], "utf8")
  .split("\n")
  .filter((line) => line.startsWith("RESULT "))
  .map((line) => JSON.parse(line.slice(7)));

const fixed = (value, digits) => (Number.isFinite(value) ? value.toFixed(digits) : "-");
const rows = [
  ["system", "path", "storage", "A create-only jobs/s", "A end-to-end jobs/s", "B dispatch p50/p99 ms", "B completion p50/p99 ms"],
  ...results.map((r) => [
    r.system,
    r.path,
    r.storage,
    fixed(r.createOnly, 0),
    fixed(r.endToEnd, 0),
    `${fixed(r.dispatchP50, 2)} / ${fixed(r.dispatchP99, 2)}`,
    `${fixed(r.completionP50, 2)} / ${fixed(r.completionP99, 2)}`,
  ]),
];
const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
const line = (row) => `| ${row.map((cell, column) => cell.padEnd(widths[column])).join(" | ")} |`;
console.log(line(rows[0]));
console.log(`|${widths.map((width) => "-".repeat(width + 2)).join("|")}|`);
rows.slice(1).forEach((row) => console.log(line(row)));

const emit = results.filter((r) => r.system === "emit");
const best = (key, better) => emit.reduce((found, r) => (better(r[key], found[key]) ? r : found), emit[0]);
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
console.log("\nemit's best configuration per column / peer (above 1.00: emit leads):");
for (const peer of results.filter((r) => r.system !== "emit")) {
  const ratios = columns.map(([label, key, better]) => {
    const ours = best(key, better);
    const ratio = better === higher ? ours[key] / peer[key] : peer[key] / ours[key];
    return `${label} ${fixed(ratio, 2)}x (${ours.path}, ${ours.storage})`;
  });
  console.log(`- vs ${peer.system}: ${ratios.join("; ")}`);
}
