// Kokoro in JavaScript: the same rules as voxray's Python path (voxray/tts/pipeline.py,
// voxray/tts/voices.py, voxray/tts/onnx_runner.py), shared by the page (onnxruntime-web) and the
// parity suite (onnxruntime-node). Pure functions; the onnxruntime module is passed in.

export const SAMPLE_RATE = 24000;
export const STYLE_DIM = 256;
export const MAX_TOKENS = 510;
export const LEVEL_DEFECT = 1.5;
const CLICK_SAMPLES = 16; // zeroed outright: the export's amplified first ~10 samples plus margin
const TAIL_SAMPLES = 4; // the last 3 samples come out 1.4-1.5x too loud

// The style row of an utterance of nTokens content tokens (no pads): the content-token count,
// clamped to the table (kokoro-onnx / kokoro.js pick len(tokens); upstream len(phonemes)-1).
export function styleRow(nTokens, rows) {
  return Math.min(nTokens, rows - 1);
}

// "a(2)+b(1)" -> [["a", 2], ["b", 1]]; a term without weight counts 1.
export function parseBlend(spec) {
  const terms = [];
  for (const term of String(spec).split("+")) {
    const m = /^\s*([A-Za-z0-9_.\-]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*$/.exec(term);
    if (!m) throw new Error(`cannot read voice ${JSON.stringify(spec)}: write a name or a blend like 'jf_alpha(2)+jm_kumo(1)'`);
    terms.push([m[1], m[2] === undefined ? 1 : Number(m[2])]);
  }
  if (!(terms.reduce((s, [, w]) => s + w, 0) > 0)) throw new Error(`voice blend ${spec} has no positive weight`);
  return terms;
}

// Normalised weighted mean of style tables (Float32Array of rows*256), accumulated in float64
// like numpy, rows truncated to the shortest table.
export function blendTables(tables, weights) {
  const rows = Math.min(...tables.map((t) => t.length / STYLE_DIM));
  const total = weights.reduce((s, w) => s + w, 0);
  const acc = new Float64Array(rows * STYLE_DIM);
  tables.forEach((t, k) => {
    const w = weights[k] / total;
    for (let i = 0; i < acc.length; i++) acc[i] += w * t[i];
  });
  return Float32Array.from(acc);
}

// The export's defects repaired as in repair_output: 1/1.5 level, the start click zeroed, a
// raised-cosine fade-in of fadeInMs after it, and the last samples faded out.
export function repairOutput(audio, fadeInMs = 5.0, levelFix = true) {
  const out = Float32Array.from(audio);
  const n = out.length;
  if (levelFix) {
    const g = Math.fround(1.0 / LEVEL_DEFECT);
    for (let i = 0; i < n; i++) out[i] = Math.fround(out[i] * g);
  }
  if (fadeInMs > 0 && n) {
    const head = Math.min(n, CLICK_SAMPLES);
    out.fill(0, 0, head);
    const ramp = Math.min(n - head, Math.trunc((SAMPLE_RATE * fadeInMs) / 1000));
    for (let k = 1; k <= ramp; k++) {
      const g = Math.fround(0.5 - 0.5 * Math.cos((Math.PI * k) / (ramp + 1)));
      out[head + k - 1] = Math.fround(out[head + k - 1] * g);
    }
    const tail = Math.min(n - head, TAIL_SAMPLES);
    for (let k = 1; k <= tail; k++) {
      const g = Math.fround(1.0 - k / tail); // np.linspace(1, 0, tail + 1)[1:]
      out[n - tail + k - 1] = Math.fround(out[n - tail + k - 1] * g);
    }
  }
  return out;
}

// One utterance through a kokoro-onnx graph (inputs tokens/style/speed): tokens are content ids
// (no pads, at most 510); table is a voice's Float32Array(rows*256). Returns the repaired audio,
// the raw audio and the style row used.
export async function synthesize(ort, session, tokens, table, speed = 1.0, opts = {}) {
  if (!tokens.length) throw new Error("nothing to synthesize: no tokens");
  if (tokens.length > MAX_TOKENS) throw new Error(`${tokens.length} tokens exceed Kokoro's limit of ${MAX_TOKENS}`);
  const rows = table.length / STYLE_DIM;
  const row = styleRow(tokens.length, rows);
  const style = table.slice(row * STYLE_DIM, (row + 1) * STYLE_DIM);
  const ids = BigInt64Array.from([0, ...tokens, 0].map((t) => BigInt(t)));
  const feeds = {
    tokens: new ort.Tensor("int64", ids, [1, ids.length]),
    style: new ort.Tensor("float32", style, [1, STYLE_DIM]),
    speed: new ort.Tensor("float32", Float32Array.from([speed]), [1]),
  };
  const outs = await session.run(feeds);
  const raw = outs[session.outputNames[0]].data;
  const audio = repairOutput(raw, opts.fadeInMs ?? 5.0, opts.levelFix ?? true);
  return { audio, raw, row };
}
