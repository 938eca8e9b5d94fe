// server/serve.mjs: static + SPA fallback, proxies with credentials, login off loopback.
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { buildConfig, createServer, parseOptions, rewriteDicomwebUrls } from '../server/serve.mjs';

const dir = mkdtempSync(join(tmpdir(), 'serve-test-'));
const dist = join(dir, 'dist');
mkdirSync(join(dist, 'assets'), { recursive: true });
writeFileSync(join(dist, 'index.html'), '<html>ohif</html>');
writeFileSync(join(dist, 'app.bundle.0123456789abcdef.js'), 'bundle');
writeFileSync(join(dir, 'secret-outside.txt'), 'nope');
const ext = join(dir, 'ext');
mkdirSync(ext);
writeFileSync(join(ext, 'index.js'), 'export default {}');
writeFileSync(join(dir, 'app-config.js'), 'window.config = {}');
const pw = (name, value) => {
  const f = join(dir, name);
  writeFileSync(f, value + '\n');
  return f;
};

const seen = [];
let upstream;
let server;
let base;

function listen(srv) {
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv.address().port)));
}

before(async () => {
  upstream = http.createServer((req, res) => {
    const entry = { url: req.url, method: req.method, auth: req.headers.authorization, body: '' };
    seen.push(entry);
    req.on('data', (c) => (entry.body += c));
    if (req.method === 'POST') {
      return req.on('end', () => {
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end('{"version":1}');
      });
    }
    if (req.url.startsWith('/dicom-web/')) {
      res.writeHead(200, { 'content-type': 'application/dicom+json', 'www-authenticate': 'Basic realm="Orthanc"' });
      return res.end(`[{"00081190":{"vr":"UR","Value":["http://127.0.0.1:${upstream.address().port}/dicom-web/studies/1.2"]}}]`);
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('[]');
  });
  const up = await listen(upstream);
  const cfg = buildConfig(
    parseOptions([
      '--port', '0', '--orthanc', `http://127.0.0.1:${up}`, '--orthanc-user', 'pacs', '--orthanc-password-file', pw('o', 'orthanc-pw'),
      '--node-api', `http://127.0.0.1:${up}/api`, '--node-token-file', pw('t', 'tok3n'),
      '--ohif-dist', dist, '--app-config', join(dir, 'app-config.js'), '--extension-dir', ext,
    ]),
  );
  server = createServer(cfg);
  base = `http://127.0.0.1:${await listen(server)}`;
});

after(() => {
  server.close();
  upstream.close();
});

test('static files, app config, extension and SPA fallback', async () => {
  assert.equal(await (await fetch(`${base}/app-config.js`)).text(), 'window.config = {}');
  assert.equal(await (await fetch(`${base}/anomaly/index.js`)).text(), 'export default {}');
  const bundle = await fetch(`${base}/app.bundle.0123456789abcdef.js`);
  assert.match(bundle.headers.get('cache-control'), /immutable/);
  const spa = await fetch(`${base}/viewer?StudyInstanceUIDs=1.2`);
  assert.equal(spa.status, 200);
  assert.equal(await spa.text(), '<html>ohif</html>');
  assert.equal((await fetch(`${base}/missing.js`)).status, 404);
  assert.equal((await fetch(`${base}/anomaly/..%2F..%2Fsecret-outside.txt`)).status, 404);
  assert.equal((await fetch(`${base}/%2e%2e/secret-outside.txt`)).status, 404);
});

test('DICOMweb proxy adds Orthanc credentials, drops the client login, rewrites Orthanc URLs', async () => {
  seen.length = 0;
  const res = await fetch(`${base}/dicom-web/studies?limit=1`, { headers: { authorization: 'Basic dmlld2VyOnB3' } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('www-authenticate'), null);
  const body = await res.json();
  assert.equal(body[0]['00081190'].Value[0], '/dicom-web/studies/1.2');
  assert.equal(seen[0].url, '/dicom-web/studies?limit=1');
  assert.equal(seen[0].auth, 'Basic ' + Buffer.from('pacs:orthanc-pw').toString('base64'));
});

test('proxies are read-only', async () => {
  seen.length = 0;
  assert.equal((await fetch(`${base}/dicom-web/studies`, { method: 'POST', body: 'x' })).status, 405);
  assert.equal((await fetch(`${base}/ainode/studies/scores`, { method: 'DELETE' })).status, 405);
  assert.equal(seen.length, 0);
});

test('node API proxy adds the bearer token', async () => {
  seen.length = 0;
  const res = await fetch(`${base}/ainode/studies/scores`);
  assert.equal(res.status, 200);
  assert.equal(seen[0].url, '/api/studies/scores');
  assert.equal(seen[0].auth, 'Bearer tok3n');
});

test('upstream down gives 502', async () => {
  const cfg = buildConfig(parseOptions(['--orthanc', 'http://127.0.0.1:9', '--ohif-dist', dist]));
  const s = createServer(cfg);
  const port = await listen(s);
  const res = await fetch(`http://127.0.0.1:${port}/dicom-web/studies`);
  assert.equal(res.status, 502);
  s.close();
});

test('refuses a non-loopback host without its own login; asks for it when configured', async () => {
  assert.throws(() => buildConfig(parseOptions(['--host', '0.0.0.0'])), /refusing to listen/);
  assert.throws(() => buildConfig(parseOptions(['--host', '0.0.0.0', '--viewer-user', 'rad'])), /go together/);
  const cfg = buildConfig(
    parseOptions(['--host', '0.0.0.0', '--port', '0', '--viewer-user', 'rad', '--viewer-password-file', pw('v', 'long-enough-pw'), '--ohif-dist', dist]),
  );
  cfg.host = '127.0.0.1'; // listen on loopback for the test; the login stays on
  const s = createServer(cfg);
  const port = await listen(s);
  const url = `http://127.0.0.1:${port}/`;
  const anon = await fetch(url);
  assert.equal(anon.status, 401);
  assert.match(anon.headers.get('www-authenticate'), /Basic/);
  const bad = await fetch(url, { headers: { authorization: 'Basic ' + Buffer.from('rad:wrong').toString('base64') } });
  assert.equal(bad.status, 401);
  const ok = await fetch(url, { headers: { authorization: 'Basic ' + Buffer.from('rad:long-enough-pw').toString('base64') } });
  assert.equal(ok.status, 200);
  s.close();
});

test('node API not configured answers 404 (the extension falls back to QIDO)', async () => {
  const s = createServer(buildConfig(parseOptions(['--ohif-dist', dist])));
  const port = await listen(s);
  assert.equal((await fetch(`http://127.0.0.1:${port}/ainode/studies/scores`)).status, 404);
  s.close();
});

test('rewriteDicomwebUrls', () => {
  assert.equal(rewriteDicomwebUrls('"https://pacs.local:8042/orthanc/dicom-web/studies/1"'), '"/dicom-web/studies/1"');
  assert.equal(rewriteDicomwebUrls('"http://127.0.0.1:8042/wado?x"'), '"/wado?x"');
});

const FEEDBACK = '/ainode/studies/1.2.3/feedback';
const judgement = (extra = {}) => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', ...extra },
  body: JSON.stringify({ judgement: 'agree', reader: 'Dr Typed', comment: 'ok' }),
});

test('a reader judgement is the one POST the node proxy forwards, with the bearer token', async () => {
  seen.length = 0;
  const res = await fetch(`${base}${FEEDBACK}`, judgement());
  assert.equal(res.status, 201);
  assert.deepEqual(await res.json(), { version: 1 });
  assert.equal(seen.length, 1);
  assert.equal(seen[0].method, 'POST');
  assert.equal(seen[0].url, '/api/studies/1.2.3/feedback');
  assert.equal(seen[0].auth, 'Bearer tok3n');
  // no viewer login: the reader is who the panel says
  assert.equal(JSON.parse(seen[0].body).reader, 'Dr Typed');
  const session = await (await fetch(`${base}/viewer/session`)).json();
  assert.deepEqual(session, { reader: null, feedback: true });
});

test('a judgement from another origin, not JSON, too large, or on another path is refused here', async () => {
  seen.length = 0;
  const cross = await fetch(`${base}${FEEDBACK}`, judgement({ origin: 'http://evil.example' }));
  assert.equal(cross.status, 403);
  const form = await fetch(`${base}${FEEDBACK}`, { method: 'POST', body: 'judgement=agree' });
  assert.equal(form.status, 415);
  const big = await fetch(`${base}${FEEDBACK}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ judgement: 'agree', comment: 'x'.repeat(20_000) }),
  }).catch(() => ({ status: 413 })); // the server may close the socket after answering
  assert.equal(big.status, 413);
  const bad = await fetch(`${base}${FEEDBACK}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[1' });
  assert.equal(bad.status, 400);
  const other = await fetch(`${base}/ainode/jobs/x/rerun`, judgement());
  assert.equal(other.status, 405);
  const traversal = await fetch(`${base}/ainode/studies/1.2/../../jobs/feedback`, judgement());
  assert.notEqual(traversal.status, 201);
  assert.equal(seen.length, 0);
});

test('with a viewer login the reader is the logged-in user, whatever the body says', async () => {
  const up = upstream.address().port;
  const cfg = buildConfig(
    parseOptions([
      '--port', '0', '--node-api', `http://127.0.0.1:${up}/api`, '--node-token-file', pw('t2', 'tok3n'),
      '--viewer-user', 'radiologist', '--viewer-password-file', pw('v2', 'long-enough-pw'), '--ohif-dist', dist,
    ]),
  );
  const s = createServer(cfg);
  const port = await listen(s);
  const login = { authorization: 'Basic ' + Buffer.from('radiologist:long-enough-pw').toString('base64') };
  seen.length = 0;
  const res = await fetch(`http://127.0.0.1:${port}${FEEDBACK}`, judgement(login));
  assert.equal(res.status, 201);
  assert.equal(JSON.parse(seen[0].body).reader, 'radiologist');
  const session = await (await fetch(`http://127.0.0.1:${port}/viewer/session`, { headers: login })).json();
  assert.equal(session.reader, 'radiologist');
  assert.equal((await fetch(`http://127.0.0.1:${port}${FEEDBACK}`, judgement())).status, 401);
  s.close();
});
