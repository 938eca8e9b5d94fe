#!/usr/bin/env node
// Same-origin server for the OHIF viewer + the anomaly extension (Node stdlib only).
//
//   /                    prebuilt @ohif/app dist (vendor/), SPA fallback to index.html
//   /app-config.js       config/app-config.js (window.config)
//   /anomaly/*           the extension's ES modules (src/, or --extension-dir)
//   /dicom-web/*, /wado  reverse proxy to Orthanc, adding its basic-auth credentials (read-only)
//   /ainode/*            reverse proxy to the node's HTTP API, adding its bearer token (read-only,
//                        except POST /ainode/studies/<uid>/feedback: a reader's judgement)
//   /viewer/session      {reader, feedback}: the viewer login's user name (null without a login)
//
// It holds PACS credentials, so it listens on loopback by default; any other --host needs
// --viewer-user and --viewer-password-file (HTTP basic auth in front of everything).
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { timingSafeEqual, createHash } from 'node:crypto';
import { dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const OHIF_VERSION = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).config.ohifVersion;

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.ttf': 'font/ttf',
  '.txt': 'text/plain; charset=utf-8',
  '.xml': 'application/xml',
  '.webmanifest': 'application/manifest+json',
};

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
// The one write the viewer may make: a reader's judgement of a study's AI result.
const FEEDBACK_PATH = /^\/ainode\/studies\/[0-9]+(?:\.[0-9]+)*\/feedback$/;
const MAX_FEEDBACK_BODY = 16 * 1024;

/**
 * Parse the command line.
 * @param {string[]} argv arguments after the script name
 * @returns {object} options with defaults applied
 */
export function parseOptions(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string', default: '3000' },
      host: { type: 'string', default: '127.0.0.1' },
      orthanc: { type: 'string', default: 'http://127.0.0.1:8042' },
      'orthanc-user': { type: 'string' },
      'orthanc-password-file': { type: 'string' },
      'node-api': { type: 'string' },
      'node-token-file': { type: 'string' },
      'viewer-user': { type: 'string' },
      'viewer-password-file': { type: 'string' },
      'ohif-dist': { type: 'string', default: join(ROOT, 'vendor', `ohif-app-${OHIF_VERSION}`) },
      'app-config': { type: 'string', default: join(ROOT, 'config', 'app-config.js') },
      'extension-dir': { type: 'string', default: join(ROOT, 'src') },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
  return values;
}

/** Read a secret file, dropping one trailing newline. */
function readSecret(path) {
  return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
}

/** Constant-time string comparison. */
function safeEqual(a, b) {
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb) && a.length === b.length;
}

/**
 * Build the server configuration from options, validating it (throws with a clear message).
 * @param {object} opts result of parseOptions
 * @returns {object} config for createServer
 */
export function buildConfig(opts) {
  const port = Number(opts.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad --port ${opts.port}`);
  const cfg = {
    port,
    host: opts.host,
    ohifDist: resolve(opts['ohif-dist']),
    appConfig: resolve(opts['app-config']),
    extensionDir: resolve(opts['extension-dir']),
    orthanc: new URL(opts.orthanc),
    orthancAuth: null,
    nodeApi: opts['node-api'] ? new URL(opts['node-api']) : null,
    nodeAuth: null,
    viewerAuth: null,
  };
  if (opts['orthanc-user'] || opts['orthanc-password-file']) {
    if (!opts['orthanc-user'] || !opts['orthanc-password-file']) {
      throw new Error('--orthanc-user and --orthanc-password-file go together');
    }
    const token = Buffer.from(`${opts['orthanc-user']}:${readSecret(opts['orthanc-password-file'])}`);
    cfg.orthancAuth = `Basic ${token.toString('base64')}`;
  }
  if (opts['node-token-file']) cfg.nodeAuth = `Bearer ${readSecret(opts['node-token-file']).trim()}`;
  if (opts['viewer-user'] || opts['viewer-password-file']) {
    if (!opts['viewer-user'] || !opts['viewer-password-file']) {
      throw new Error('--viewer-user and --viewer-password-file go together');
    }
    const pw = readSecret(opts['viewer-password-file']);
    if (pw.length < 8) throw new Error('viewer password must have at least 8 characters');
    cfg.viewerAuth = { user: opts['viewer-user'], password: pw };
  }
  if (!LOOPBACK.has(cfg.host) && !cfg.viewerAuth) {
    throw new Error(
      `refusing to listen on ${cfg.host} without a login: this server holds the PACS credentials; ` +
        'pass --viewer-user and --viewer-password-file (or keep --host 127.0.0.1)',
    );
  }
  return cfg;
}

/** Check HTTP basic auth of the viewer's own login. */
function authorised(req, viewerAuth) {
  if (!viewerAuth) return true;
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/.exec(req.headers.authorization || '');
  if (!m) return false;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return false;
  const userOk = safeEqual(decoded.slice(0, i), viewerAuth.user);
  const pwOk = safeEqual(decoded.slice(i + 1), viewerAuth.password);
  return userOk && pwOk;
}

/** A state-changing request must come from a page of this server (no cross-site POST). */
function sameOrigin(req) {
  const origin = req.headers.origin;
  if (origin === undefined) return req.headers['sec-fetch-site'] !== 'cross-site';
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

/**
 * Forward a reader's judgement to the node: JSON only, bounded, same origin; with a viewer
 * login the reader is the logged-in user, whatever the body says.
 */
function forwardFeedback(req, res, cfg, url) {
  if (!sameOrigin(req)) return sendJson(res, 403, { error: 'cross-origin request' });
  if (!/^application\/json\b/i.test(String(req.headers['content-type'] || ''))) {
    return sendJson(res, 415, { error: 'send the judgement as application/json' });
  }
  const chunks = [];
  let size = 0;
  let refused = false;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_FEEDBACK_BODY && !refused) {
      refused = true;
      sendJson(res, 413, { error: `request body larger than ${MAX_FEEDBACK_BODY} bytes` }, { connection: 'close' });
      req.destroy();
    } else if (!refused) chunks.push(c);
  });
  req.on('end', () => {
    if (refused) return;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return sendJson(res, 400, { error: 'the body is not valid JSON' });
    }
    if (!body || typeof body !== 'object' || Array.isArray(body)) {
      return sendJson(res, 400, { error: 'the body must be a JSON object' });
    }
    if (cfg.viewerAuth) body.reader = cfg.viewerAuth.user;
    const data = Buffer.from(JSON.stringify(body), 'utf8');
    const target = joinUrl(cfg.nodeApi, url.slice('/ainode'.length));
    const headers = { accept: 'application/json', 'content-type': 'application/json', 'content-length': data.length };
    if (cfg.nodeAuth) headers.authorization = cfg.nodeAuth;
    const lib = target.protocol === 'https:' ? https : http;
    const up = lib.request(target, { method: 'POST', headers }, (upRes) => {
      const out = { 'content-type': upRes.headers['content-type'] || 'application/json' };
      res.writeHead(upRes.statusCode, out);
      upRes.pipe(res);
    });
    up.setTimeout(30_000, () => up.destroy(new Error('upstream timeout')));
    up.on('error', (err) => {
      if (!res.headersSent) sendJson(res, 502, { error: `node API unreachable: ${err.message}` });
      else res.destroy();
    });
    up.end(data);
  });
}

function sendJson(res, status, body, extra = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
    ...extra,
  });
  res.end(data);
}

/** Resolve `rel` inside `base`, or null when it escapes it or is not a file. */
function fileInside(base, rel) {
  let decoded;
  try {
    decoded = decodeURIComponent(rel);
  } catch {
    return null;
  }
  if (decoded.includes('\0')) return null;
  const full = resolve(base, '.' + sep + decoded);
  if (full !== base && !full.startsWith(base + sep)) return null;
  try {
    return statSync(full).isFile() ? full : null;
  } catch {
    return null;
  }
}

function sendFile(req, res, file, cache) {
  const type = MIME[extname(file).toLowerCase()] || 'application/octet-stream';
  const { size } = statSync(file);
  res.writeHead(200, { 'content-type': type, 'content-length': size, 'cache-control': cache });
  if (req.method === 'HEAD') return res.end();
  createReadStream(file).pipe(res);
}

/** JSON responses from Orthanc carry absolute URLs of Orthanc itself (BulkDataURI, RetrieveURL):
 * make them server-relative so the browser fetches them through this proxy. */
export function rewriteDicomwebUrls(text) {
  return text.replace(/https?:\/\/[^"\s]*?\/(dicom-web|wado)\b/g, '/$1');
}

/**
 * Forward a request to an upstream, replacing the client's Authorization with ours.
 * @param {http.IncomingMessage} req
 * @param {http.ServerResponse} res
 * @param {URL} target full upstream URL
 * @param {string|null} auth Authorization header for upstream
 * @param {boolean} rewriteJson rewrite absolute Orthanc URLs in JSON bodies
 */
function proxy(req, res, target, auth, rewriteJson) {
  const headers = {};
  for (const name of ['accept', 'range', 'if-none-match', 'if-modified-since', 'content-type']) {
    if (req.headers[name]) headers[name] = req.headers[name];
  }
  if (auth) headers.authorization = auth;
  const lib = target.protocol === 'https:' ? https : http;
  const up = lib.request(target, { method: req.method, headers }, (upRes) => {
    const out = { ...upRes.headers };
    delete out['www-authenticate']; // never let the browser prompt for the PACS login
    delete out.connection;
    delete out['keep-alive'];
    delete out['transfer-encoding'];
    const ctype = String(upRes.headers['content-type'] || '');
    if (rewriteJson && /json/i.test(ctype) && !upRes.headers['content-encoding']) {
      const chunks = [];
      upRes.on('data', (c) => chunks.push(c));
      upRes.on('end', () => {
        const body = Buffer.from(rewriteDicomwebUrls(Buffer.concat(chunks).toString('utf8')), 'utf8');
        out['content-length'] = body.length;
        res.writeHead(upRes.statusCode, out);
        res.end(body);
      });
      upRes.on('error', () => res.destroy());
      return;
    }
    res.writeHead(upRes.statusCode, out);
    upRes.pipe(res);
  });
  up.setTimeout(120_000, () => up.destroy(new Error('upstream timeout')));
  up.on('error', (err) => {
    if (!res.headersSent) sendJson(res, 502, { error: `upstream ${target.host} unreachable: ${err.message}` });
    else res.destroy();
  });
  req.pipe(up);
}

function joinUrl(base, pathAndQuery) {
  const u = new URL(base.href);
  u.pathname = base.pathname.replace(/\/$/, '') + pathAndQuery.split('?')[0];
  const q = pathAndQuery.indexOf('?');
  u.search = q >= 0 ? pathAndQuery.slice(q) : '';
  return u;
}

/**
 * Create the HTTP server (not yet listening).
 * @param {object} cfg result of buildConfig
 * @returns {http.Server}
 */
export function createServer(cfg) {
  return http.createServer((req, res) => {
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('referrer-policy', 'no-referrer');
    if (!authorised(req, cfg.viewerAuth)) {
      return sendJson(res, 401, { error: 'login required' }, {
        'www-authenticate': 'Basic realm="AI anomaly viewer", charset="UTF-8"',
      });
    }
    const url = req.url || '/';
    const path = url.split('?')[0];
    const readOnly = req.method === 'GET' || req.method === 'HEAD';

    if (path.startsWith('/dicom-web/') || path === '/dicom-web' || path.startsWith('/wado')) {
      if (!readOnly) return sendJson(res, 405, { error: 'read-only proxy' }, { allow: 'GET, HEAD' });
      return proxy(req, res, joinUrl(cfg.orthanc, url), cfg.orthancAuth, true);
    }
    if (path === '/viewer/session') {
      return sendJson(res, 200, { reader: cfg.viewerAuth ? cfg.viewerAuth.user : null, feedback: Boolean(cfg.nodeApi) }, { 'cache-control': 'no-store' });
    }
    if (path.startsWith('/ainode/')) {
      if (!cfg.nodeApi) return sendJson(res, 404, { error: 'node API not configured (--node-api)' });
      if (req.method === 'POST' && FEEDBACK_PATH.test(path)) return forwardFeedback(req, res, cfg, url);
      if (!readOnly) return sendJson(res, 405, { error: 'read-only proxy' }, { allow: 'GET, HEAD' });
      return proxy(req, res, joinUrl(cfg.nodeApi, url.slice('/ainode'.length)), cfg.nodeAuth, false);
    }
    if (!readOnly) return sendJson(res, 405, { error: 'method not allowed' }, { allow: 'GET, HEAD' });
    if (path === '/app-config.js') return sendFile(req, res, cfg.appConfig, 'no-cache');
    if (path.startsWith('/anomaly/')) {
      const f = fileInside(cfg.extensionDir, path.slice('/anomaly/'.length));
      return f ? sendFile(req, res, f, 'no-cache') : sendJson(res, 404, { error: 'not found' });
    }
    const f = path !== '/' && fileInside(cfg.ohifDist, path.slice(1));
    if (f) {
      const hashed = /\.[0-9a-f]{16}\.(js|wasm)$|^\/[0-9a-f]{16}\.wasm$/.test(path);
      return sendFile(req, res, f, hashed ? 'public, max-age=31536000, immutable' : 'no-cache');
    }
    if (extname(path) && path !== '/') return sendJson(res, 404, { error: 'not found' });
    // SPA fallback: /, /viewer?..., /segmentation?... -> index.html
    const index = join(cfg.ohifDist, 'index.html');
    if (!existsSync(index)) {
      return sendJson(res, 503, { error: `OHIF viewer not found in ${cfg.ohifDist}: run npm run setup` });
    }
    return sendFile(req, res, index, 'no-cache');
  });
}

const USAGE = `usage: node server/serve.mjs [--port 3000] [--host 127.0.0.1]
  [--orthanc http://127.0.0.1:8042] [--orthanc-user U --orthanc-password-file F]
  [--node-api http://127.0.0.1:8000] [--node-token-file F]
  [--viewer-user U --viewer-password-file F]   (required when --host is not loopback)
  [--ohif-dist DIR] [--app-config FILE] [--extension-dir DIR]`;

async function main() {
  let cfg;
  try {
    const opts = parseOptions(process.argv.slice(2));
    if (opts.help) {
      console.log(USAGE);
      return;
    }
    cfg = buildConfig(opts);
  } catch (err) {
    console.error(`serve: ${err.message}\n${USAGE}`);
    process.exit(2);
  }
  if (!existsSync(join(cfg.ohifDist, 'index.html'))) {
    console.error(`serve: warning: no OHIF viewer in ${cfg.ohifDist} (run: npm --prefix ohif-extension run setup)`);
  }
  const server = createServer(cfg);
  server.on('error', (err) => {
    console.error(`serve: ${err.message}`);
    process.exit(1);
  });
  server.listen(cfg.port, cfg.host, () => {
    const { port } = server.address();
    const host = cfg.host.includes(':') ? `[${cfg.host}]` : cfg.host;
    console.log(`viewer: http://${host}:${port}/`);
  });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
