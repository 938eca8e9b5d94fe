#!/usr/bin/env node
// Bundle src/ into one minified ES module: dist/anomaly/index.js (+ source map).
// server/serve.mjs serves src/ directly by default; use the bundle with
// `--extension-dir dist/anomaly` or on any static server that hosts the viewer.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const t0 = Date.now();
const result = await build({
  entryPoints: [join(ROOT, 'src', 'index.js')],
  outfile: join(ROOT, 'dist', 'anomaly', 'index.js'),
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  metafile: true,
  logLevel: 'warning',
});
const bytes = Object.values(result.metafile.outputs).find((o) => o.entryPoint)?.bytes;
console.log(`build: dist/anomaly/index.js ${(bytes / 1024).toFixed(1)} KB in ${Date.now() - t0} ms`);
