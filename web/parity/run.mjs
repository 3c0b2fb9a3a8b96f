// Parity runner: node parity/run.mjs CASES.json OUT_DIR
// CASES.json: {"model": path, "voices": {name: path to float32 rows*256}, "cases": [{id, tokens, voice, speed}]}
// Writes OUT_DIR/<id>.f32 (repaired audio) and OUT_DIR/results.json (row, samples per case).
// node parity/run.mjs --selftest checks the pure rules without a model.
import fs from "node:fs";
import path from "node:path";
import { blendTables, parseBlend, repairOutput, styleRow, synthesize } from "../src/kokoro.js";

function loadTable(file) {
  const buf = fs.readFileSync(file);
  return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4).slice();
}

if (process.argv[2] === "--selftest") {
  const rules = {
    row_1: styleRow(1, 510), row_9: styleRow(9, 510), row_509: styleRow(509, 510), row_510: styleRow(510, 510),
    blend: parseBlend("jf_alpha(2)+jm_kumo(1)"), plain: parseBlend("jf_alpha"),
    repaired_head: Array.from(repairOutput(new Float32Array(200).fill(1.5)).slice(0, 20)),
  };
  console.log(JSON.stringify(rules));
  process.exit(0);
}

const [casesFile, outDir] = process.argv.slice(2);
const spec = JSON.parse(fs.readFileSync(casesFile, "utf8"));
const ort = (await import("onnxruntime-node")).default;
const session = await ort.InferenceSession.create(spec.model, {
  intraOpNumThreads: spec.threads ?? 1, interOpNumThreads: 1, executionProviders: ["cpu"], logSeverityLevel: 3,
});
const tables = Object.fromEntries(Object.entries(spec.voices).map(([n, f]) => [n, loadTable(f)]));
fs.mkdirSync(outDir, { recursive: true });
const results = {};
for (const c of spec.cases) {
  const terms = parseBlend(c.voice);
  const table = terms.length === 1 && terms[0][1] > 0 ? tables[terms[0][0]]
    : blendTables(terms.map(([n]) => tables[n]), terms.map(([, w]) => w));
  const t0 = performance.now();
  const { audio, row } = await synthesize(ort, session, c.tokens, table, c.speed);
  fs.writeFileSync(path.join(outDir, `${c.id}.f32`), Buffer.from(audio.buffer, audio.byteOffset, audio.byteLength));
  results[c.id] = { row, samples: audio.length, ms: performance.now() - t0 };
}
fs.writeFileSync(path.join(outDir, "results.json"), JSON.stringify({ ort: ort.env.versions?.node ?? null, results }));
console.log(JSON.stringify(results));
