#!/usr/bin/env node
// Fetch the prebuilt OHIF viewer (@ohif/app, pinned) into vendor/ohif-app-<version>/.
//
// `npm pack` downloads the published tarball through the ordinary npm client (which checks the
// registry's integrity); we check it again against the sha512 pinned below, untar it with the
// system tar and drop the parts the anomaly viewer does not use (onnxruntime-web for OHIF's own AI
// tools: 136 MB, the slide microscopy viewer: 20 MB). Idempotent: does nothing when the stamp file
// says the pinned version is already there.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const OHIF_VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).config.ohifVersion;
/** dist.integrity of @ohif/app@3.13.2 on the npm registry. */
const INTEGRITY =
  'sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==';
const DROP = ['ort', 'dicom-microscopy-viewer'];

/** Where setup puts the viewer's dist folder. */
export const VENDOR_DIST = join(ROOT, 'vendor', `ohif-app-${OHIF_VERSION}`);

function main() {
  const keepAll = process.argv.includes('--keep-all');
  const stamp = join(VENDOR_DIST, '.ohif-version');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === OHIF_VERSION) {
    console.log(`setup: @ohif/app ${OHIF_VERSION} already in ${VENDOR_DIST}`);
    return;
  }
  const t0 = Date.now();
  mkdirSync(join(ROOT, 'vendor'), { recursive: true });
  const tmp = mkdtempSync(join(ROOT, 'vendor', '.tmp-'));
  try {
    const out = execFileSync(
      'npm',
      ['pack', `@ohif/app@${OHIF_VERSION}`, '--pack-destination', tmp, '--silent'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const tgz = join(tmp, out.trim().split('\n').pop());
    const digest = 'sha512-' + createHash('sha512').update(readFileSync(tgz)).digest('base64');
    if (digest !== INTEGRITY) {
      throw new Error(`integrity mismatch for ${tgz}: ${digest} != pinned ${INTEGRITY}`);
    }
    execFileSync('tar', ['-xzf', tgz, '-C', tmp, 'package/dist'], { stdio: 'inherit' });
    const dist = join(tmp, 'package', 'dist');
    if (!keepAll) for (const d of DROP) rmSync(join(dist, d), { recursive: true, force: true });
    writeFileSync(join(dist, '.ohif-version'), OHIF_VERSION + '\n');
    rmSync(VENDOR_DIST, { recursive: true, force: true });
    renameSync(dist, VENDOR_DIST);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`setup: @ohif/app ${OHIF_VERSION} -> ${VENDOR_DIST} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (err) {
    console.error(`setup failed: ${err.message}`);
    process.exit(1);
  }
}
