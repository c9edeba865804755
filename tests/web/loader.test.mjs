// The browser's streaming loader and its recovery, in headless Chromium against `bd3-wgpu serve`:
// a model.safetensors whose data_offsets the native loader refuses (data beyond the file, a gap,
// trailing bytes, an overlap, an offset beyond wasm32's address space) gives a readable error at once — no silent load of shifted bytes, no
// re-download loop — and a panic inside the wasm engine is reported and the next Load works.
// Run by scripts/test.sh: node --test tests/web/ (needs the wasm package in web/pkg and Chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, copyFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { root, startServe, launchBrowser, openPage as openTab } from './harness.mjs';

const fixture = path.join(root, 'tests/fixtures/tiny-a');
let server, context, base;

// model.safetensors of the fixture, split into (header object, data section).
function fixtureParts() {
  const bytes = readFileSync(path.join(fixture, 'model.safetensors'));
  const n = Number(bytes.readBigUInt64LE(0));
  return { header: JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')), data: bytes.subarray(8 + n) };
}

function safetensors(header, data) {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

// Tensor names in file order.
const byOffset = (header) => Object.keys(header).filter((k) => k !== '__metadata__').sort((a, b) => header[a].data_offsets[0] - header[b].data_offsets[0]);

// name → [model.safetensors bytes, what the error must say]
function badModels() {
  const cases = {};
  {
    const { header, data } = fixtureParts();
    cases['bad-end'] = [safetensors(header, data.subarray(0, data.length - 4)), /end beyond the file/];
  }
  {
    const { header, data } = fixtureParts();
    for (const k of byOffset(header)) header[k].data_offsets = header[k].data_offsets.map((x) => x + 4);
    cases['bad-gap'] = [safetensors(header, Buffer.concat([Buffer.alloc(4), data])), /gap of 4 bytes/];
  }
  {
    const { header, data } = fixtureParts();
    cases['bad-trailing'] = [safetensors(header, Buffer.concat([data, Buffer.alloc(8)])), /8 trailing bytes/];
  }
  {
    const { header, data } = fixtureParts();
    const second = byOffset(header)[1];
    header[second].data_offsets = header[second].data_offsets.map((x) => x - 4);
    cases['bad-overlap'] = [safetensors(header, data), /overlap the previous tensor/];
  }
  {
    // 2^40 fits a u64 but not wasm32's usize: an error, not a truncation (to 0, which would read as
    // a backward range, or worse, as a valid one).
    const { header, data } = fixtureParts();
    const last = byOffset(header).at(-1);
    header[last].data_offsets[1] = 2 ** 40;
    cases['bad-wide'] = [safetensors(header, data), /data offset 1099511627776 does not fit this platform's 32-bit addresses/];
  }
  return cases;
}
const cases = badModels();

before(async () => {
  const extra = [];
  for (const [name, [bytes]] of Object.entries(cases)) {
    const dir = path.join(root, 'target/web', name);
    mkdirSync(dir, { recursive: true });
    copyFileSync(path.join(fixture, 'config.json'), path.join(dir, 'config.json'));
    writeFileSync(path.join(dir, 'model.safetensors'), bytes);
    extra.push('--extra-model', `${name}=${dir}`);
  }
  extra.push('--extra-model', `tiny-a=${fixture}`);
  ({ server, base } = await startServe(extra));
  context = await launchBrowser('loader');
});

after(async () => {
  await context?.close();
  server?.kill();
});

const openPage = (query = '') => openTab(context, base, query);

async function loadUrl(page, url) {
  await page.selectOption('#model-choice', 'url');
  await page.fill('#model-url', url);
  await page.click('#load-btn');
  await page.waitForFunction(() => window.bd3.loaded || window.bd3.error, null, { timeout: 120_000 });
}

test('bad data_offsets give a readable error at once, without a re-download', async () => {
  const page = await openPage();
  const downloads = {};
  // GET requests for the weights, the worker's included (Chromium reports them to the context).
  context.on('request', (r) => { if (r.url().endsWith('/model.safetensors') && r.method() === 'GET') downloads[r.url()] = (downloads[r.url()] || 0) + 1; });
  for (const [name, [, want]] of Object.entries(cases)) {
    await page.evaluate(() => { window.bd3.statuses.length = 0; });
    await loadUrl(page, `${base}models/${name}/`);
    const { error, loaded, statuses } = await page.evaluate(() => ({ error: window.bd3.error, loaded: window.bd3.loaded, statuses: window.bd3.statuses }));
    assert.equal(loaded, false, `${name}: loaded`);
    assert.match(error || '', want, name);
    assert.match(error, /^model\.safetensors: /, `${name}: ${error}`);
    assert.equal(await page.isVisible('#error'), true);
    assert.ok(!statuses.some((s) => /retrying|interrupted/.test(s)), `${name} was downloaded again: ${statuses.join(' | ')}`);
    assert.equal(downloads[`${base}models/${name}/model.safetensors`], 1, `${name} downloaded again: ${JSON.stringify(downloads)}`);
  }
  // The intact fixture still loads in the same page.
  await loadUrl(page, `${base}models/tiny-a/`);
  assert.equal(await page.evaluate(() => window.bd3.error), null);
  assert.equal(await page.evaluate(() => window.bd3.loaded), true);
  await page.close();
});

test('a panic in the wasm engine is reported and the next Load works', async () => {
  // The hook exists only with ?selftest=panic.
  const plain = await openPage();
  assert.equal(await plain.evaluate(() => typeof window.bd3.debugPanic), 'undefined');
  await plain.close();

  const page = await openPage('?selftest=panic');
  await loadUrl(page, `${base}models/tiny-a/`);
  assert.equal(await page.evaluate(() => window.bd3.loaded), true);
  await page.evaluate(() => window.bd3.debugPanic());
  await page.waitForFunction(() => window.bd3.restarts === 1 && window.bd3.ready, null, { timeout: 60_000 });
  const text = await page.textContent('#error');
  assert.match(text, /The GPU engine crashed: [^]*panicked at [^]*deliberate panic \(test hook debugPanic\)/);
  assert.match(text, /restarted/);
  assert.equal(await page.evaluate(() => window.bd3.loaded), false);
  // The next Load works, and so does generating with the new engine.
  await loadUrl(page, `${base}models/tiny-a/`);
  assert.equal(await page.evaluate(() => window.bd3.error), null);
  assert.equal(await page.evaluate(() => window.bd3.loaded), true);
  await page.fill('#prompt', '5,6,7');
  await page.fill('#length', '16');
  await page.click('#gen-btn');
  await page.waitForFunction(() => window.bd3.result || window.bd3.error, null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => window.bd3.error), null);
  assert.equal(await page.evaluate(() => window.bd3.result.tokens[0].length), 16);
  await page.close();
});
