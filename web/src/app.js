// voxray's page: speak (server or in-browser Kokoro), transcribe (file, recording, live WebSocket),
// embeddings, auth key kept in sessionStorage. Bundled by esbuild into voxray/web_static.
import * as ort from "onnxruntime-web/wasm";
import { SAMPLE_RATE, blendTables, parseBlend, synthesize } from "./kokoro.js";

const $ = (id) => document.getElementById(id);
const KEY = "voxray.apiKey";
const state = { session: null, tables: {}, audioCtx: null, lastAudio: null, words: [] };
window.voxray = state; // for tests and the console

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "err" : "";
}
function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}
async function api(path, init = {}) {
  const resp = await fetch(path, { ...init, headers: headers(init.headers || {}) });
  if (!resp.ok) {
    let msg = `${resp.status}`;
    try { msg = (await resp.json()).error.message; } catch { /* not JSON */ }
    throw new Error(msg);
  }
  return resp;
}
function audioCtx() {
  if (!state.audioCtx) state.audioCtx = new AudioContext({ sampleRate: SAMPLE_RATE });
  return state.audioCtx;
}
function play(samples, when = 0) {
  const ctx = audioCtx();
  const buf = ctx.createBuffer(1, samples.length, SAMPLE_RATE);
  buf.copyToChannel(samples, 0);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  const at = Math.max(ctx.currentTime, when);
  src.start(at);
  return at + buf.duration;
}
function showResult(audio, engine) {
  state.lastAudio = audio;
  const el = $("speak-result");
  el.dataset.duration = (audio.length / SAMPLE_RATE).toFixed(3);
  el.dataset.engine = engine;
  el.textContent = `${engine}: ${(audio.length / SAMPLE_RATE).toFixed(2)} s of audio`;
}
function concat(parts) {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

// ---------------------------------------------------------------- speak
// Server-sent events (stream_format "sse"): each speech.audio.delta holds the next pcm16 chunk and
// the words it says; every chunk is scheduled right after the previous one and each word gets the
// AudioContext time it will be heard at, so highlighting follows the sound even after an underrun.
async function speakServer(text, voice, speed, lang) {
  const resp = await api("/v1/audio/speech", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: "tts-1", input: text, voice, speed, lang, response_format: "pcm", stream_format: "sse" }),
  });
  const box = $("speak-words");
  box.textContent = "";
  state.words = [];
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  const parts = [];
  let buffer = "";
  let until = 0;
  let offset = 0; // stream seconds before this chunk
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data: ")) continue;
      const ev = JSON.parse(line.slice(6));
      if (ev.type !== "speech.audio.delta") continue;
      const bytes = Uint8Array.from(atob(ev.audio), (c) => c.charCodeAt(0));
      const view = new DataView(bytes.buffer, 0, bytes.length - (bytes.length % 2));
      const f = new Float32Array(view.byteLength / 2);
      for (let i = 0; i < f.length; i++) f[i] = view.getInt16(2 * i, true) / 32767;
      if (!f.length) continue;
      const at = Math.max(audioCtx().currentTime, until);
      until = play(f, until);
      for (const w of ev.words || []) addWord(box, w, at + (w.start - offset), at + (w.end - offset));
      offset += f.length / SAMPLE_RATE;
      parts.push(f);
      if (state.words.length) highlight();
    }
  }
  return concat(parts);
}
function addWord(box, w, heardAt, heardEnd) {
  const span = document.createElement("span");
  span.textContent = w.word;
  span.dataset.start = w.start;
  span.dataset.end = w.end;
  box.append(span, " ");
  state.words.push({ span, at: heardAt, end: heardEnd });
}
let highlighting = false;
function highlight() {
  if (highlighting) return;
  highlighting = true;
  const tick = () => {
    const now = audioCtx().currentTime;
    let pending = false;
    for (const w of state.words) {
      const on = w.at <= now && now < w.end;
      w.span.classList.toggle("on", on);
      if (w.at <= now) w.span.classList.add("said");
      else pending = true;
    }
    if (pending || now < (state.words.at(-1)?.end ?? 0)) requestAnimationFrame(tick);
    else { highlighting = false; for (const w of state.words) w.span.classList.remove("on"); }
  };
  requestAnimationFrame(tick);
}
async function voiceTable(spec) {
  const terms = parseBlend(spec);
  const tables = [];
  for (const [name] of terms) {
    if (!state.tables[name]) {
      const buf = await (await api(`/v1/audio/voices/${encodeURIComponent(name)}/style`)).arrayBuffer();
      state.tables[name] = new Float32Array(buf);
    }
    tables.push(state.tables[name]);
  }
  return terms.length === 1 ? tables[0] : blendTables(tables, terms.map(([, w]) => w));
}
async function kokoroSession() {
  if (!state.session) {
    setStatus("loading the Kokoro model into the browser ...");
    ort.env.wasm.wasmPaths = new URL("static/", document.baseURI).href;
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const model = await (await api("/v1/audio/kokoro/model.onnx")).arrayBuffer();
    state.session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  }
  return state.session;
}
async function speakBrowser(text, voice, speed, lang) {
  $("speak-words").textContent = "";
  state.words = [];
  const plan = await (await api("/v1/audio/phonemes", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input: text, lang }),
  })).json();
  const table = await voiceTable(voice);
  const session = await kokoroSession();
  const parts = [];
  let until = 0;
  for (const chunk of plan.chunks) {
    if (!chunk.tokens.length) continue;
    setStatus(`synthesising in the browser: ${chunk.text.slice(0, 40)}`);
    const { audio } = await synthesize(ort, session, chunk.tokens, table, speed);
    parts.push(audio);
    until = play(audio, until);
  }
  state.lastPlan = plan;
  return concat(parts);
}
async function speak() {
  if (!$("voice-list").options.length) loadVoices();
  const text = $("speak-text").value;
  const voice = $("speak-voice").value.trim() || "jf_alpha";
  const speed = Number($("speak-speed").value) || 1.0;
  const lang = $("speak-lang").value.trim() || "en-us";
  const engine = document.querySelector("input[name=engine]:checked").value;
  setStatus(`speaking (${engine}) ...`);
  try {
    const audio = engine === "browser" ? await speakBrowser(text, voice, speed, lang)
      : await speakServer(text, voice, speed, lang);
    showResult(audio, engine);
    setStatus("done");
  } catch (e) { setStatus(`speak: ${e.message}`, true); }
}

// ---------------------------------------------------------------- transcribe
function showTranscript(result, blob) {
  $("asr-text").textContent = result.text;
  const words = $("asr-words");
  words.textContent = "";
  const audio = $("asr-audio");
  if (blob) audio.src = URL.createObjectURL(blob);
  for (const w of result.words || []) {
    const span = document.createElement("span");
    span.textContent = w.word;
    span.dataset.start = w.start;
    span.onclick = () => { audio.currentTime = w.start; audio.play(); };
    words.append(span, " ");
  }
}
async function transcribeBlob(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  form.append("model", "whisper-1");
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  setStatus("transcribing ...");
  try {
    const result = await (await api("/v1/audio/transcriptions", { method: "POST", body: form })).json();
    showTranscript(result, blob);
    setStatus("done");
  } catch (e) { setStatus(`transcribe: ${e.message}`, true); }
}
let recorder = null;
async function toggleRecord() {
  if (recorder) { recorder.stop(); return; }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    $("asr-rec").textContent = "record";
    transcribeBlob(new Blob(chunks, { type: chunks[0]?.type || "audio/webm" }), "recording.webm");
  };
  recorder.start();
  $("asr-rec").textContent = "stop recording";
}

// live: ws://HOST/v1/realtime?intent=transcription, OpenAI Realtime transcription events, pcm16 16 kHz
let live = null;
function b64(int16) {
  const bytes = new Uint8Array(int16.buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
async function toggleLive() {
  if (live) { live.stop(); return; }
  const key = sessionStorage.getItem(KEY);
  const url = new URL("v1/realtime?intent=transcription", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  // raw capture: echo cancellation, noise suppression and gain control reshape speech, and the
  // recogniser was trained on unprocessed audio
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext({ sampleRate: 16000 });
  // opened once the microphone is ours, handlers set at once: an "open" before them would be lost
  const ws = new WebSocket(url, key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"]);
  const source = ctx.createMediaStreamSource(stream);
  const proc = ctx.createScriptProcessor(4096, 1, 1);
  proc.onaudioprocess = (e) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const f = e.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(f.length);
    for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(f[i] * 32767)));
    ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: b64(pcm) }));
  };
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "transcription_session.update",
      session: { input_audio_sample_rate: 16000, input_audio_format: "pcm16" } }));
    source.connect(proc); proc.connect(ctx.destination);
    setStatus("listening ...");
  };
  ws.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === "conversation.item.input_audio_transcription.delta") $("live-partial").textContent += ev.delta;
    else if (ev.type === "conversation.item.input_audio_transcription.completed") {
      $("live-final").textContent += `${ev.transcript}\n`;
      $("live-partial").textContent = "";
    } else if (ev.type === "error") setStatus(`live: ${ev.error.message}`, true);
  };
  ws.onclose = (e) => { if (live) live.stop(); if (e.code !== 1000) setStatus(`live: closed (${e.code})`, e.code !== 1005); };
  live = {
    stop() {
      live = null;
      proc.disconnect(); source.disconnect(); stream.getTracks().forEach((t) => t.stop()); ctx.close();
      if (ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify({ type: "input_audio_buffer.commit" })); ws.close(1000); }
      $("asr-live").textContent = "live microphone";
    },
  };
  $("asr-live").textContent = "stop live";
}

// ---------------------------------------------------------------- embeddings
async function embedFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return (await (await api("/v1/audio/embeddings", { method: "POST", body: form })).json()).data[0].embedding;
}
export function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb || 1);
}
async function compare() {
  const [a, b] = [$("emb-a").files[0], $("emb-b").files[0]];
  if (!a || !b) { setStatus("embeddings: choose two files", true); return; }
  try {
    const [ea, eb] = await Promise.all([embedFile(a), embedFile(b)]);
    $("emb-result").textContent = `cosine similarity: ${cosine(ea, eb).toFixed(4)}`;
    setStatus("done");
  } catch (e) { setStatus(`embeddings: ${e.message}`, true); }
}

// ---------------------------------------------------------------- wiring
async function loadVoices() {
  try {
    const data = await (await api("/v1/audio/voices")).json();
    const list = $("voice-list");
    list.textContent = "";
    for (const v of data.voices || []) {
      const opt = document.createElement("option");
      opt.value = typeof v === "string" ? v : v.name;
      list.append(opt);
    }
  } catch { /* no TTS deployment, or a key is needed first */ }
}
$("key").value = sessionStorage.getItem(KEY) || "";
$("key-save").onclick = () => { sessionStorage.setItem(KEY, $("key").value.trim()); setStatus("key set for this tab"); loadVoices(); };
$("key-clear").onclick = () => { sessionStorage.removeItem(KEY); $("key").value = ""; setStatus("key forgotten"); };
$("speak-go").onclick = speak;
$("asr-go").onclick = () => { const f = $("asr-file").files[0]; if (f) transcribeBlob(f, f.name); else setStatus("choose a file", true); };
$("asr-rec").onclick = () => toggleRecord().catch((e) => setStatus(`record: ${e.message}`, true));
$("asr-live").onclick = () => toggleLive().catch((e) => setStatus(`live: ${e.message}`, true));
$("emb-go").onclick = compare;
// with a key from this tab's session, or on a server without auth (?open), list the voices now;
// otherwise after "use key" (a request without the key would only log a 401)
if (sessionStorage.getItem(KEY) || new URLSearchParams(location.search).has("open")) loadVoices();
