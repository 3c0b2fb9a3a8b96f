// Bundles web/src into voxray/web_static (no CDN: everything from node_modules).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(here, "..", "voxray", "web_static");
const ortDist = path.join(here, "node_modules", "onnxruntime-web", "dist");
fs.mkdirSync(out, { recursive: true });
for (const f of fs.readdirSync(out)) if (f !== ".gitignore") fs.rmSync(path.join(out, f), { recursive: true });
await esbuild.build({
  entryPoints: [path.join(here, "src", "app.js")],
  bundle: true, format: "esm", minify: true, target: "es2022", outfile: path.join(out, "app.js"),
  logLevel: "warning", legalComments: "none",
});
fs.copyFileSync(path.join(here, "src", "index.html"), path.join(out, "index.html"));
fs.copyFileSync(path.join(here, "src", "app.css"), path.join(out, "app.css"));
// onnxruntime-web's WASM backend loads these two at run time (env.wasm.wasmPaths = "static/").
for (const f of ["ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs"]) {
  fs.copyFileSync(path.join(ortDist, f), path.join(out, f));
}
fs.writeFileSync(path.join(out, ".gitignore"), "*\n!.gitignore\n");
let total = 0;
for (const f of fs.readdirSync(out)) total += fs.statSync(path.join(out, f)).size;
console.log(`built ${out}: ${(total / 1e6).toFixed(2)} MB (app.js ${(fs.statSync(path.join(out, "app.js")).size / 1e3).toFixed(0)} kB)`);
