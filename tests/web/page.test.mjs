// Headless Chromium (WebGPU on SwiftShader, shaders compiled by Tint) against the page served by
// `bd3-wgpu serve`: the fixture checks pass in the page, the page generates the same tokens as the
// native binary, the UI works as a user uses it, and a broken model folder gives a readable error.
// Run by scripts/test.sh: node --test tests/web/ (needs the wasm package in web/pkg and Chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { root, bin, startServe, launchBrowser, openPage as openTab } from './harness.mjs';
import { mkdirSync, writeFileSync, copyFileSync, readFileSync } from 'node:fs';
import path from 'node:path';

const shots = path.join(root, 'target/screenshots');
let server, context, base;

before(async () => {
  mkdirSync(shots, { recursive: true });
  // A broken model folder the page must reject in words.
  const broken = path.join(root, 'target/web/broken');
  mkdirSync(broken, { recursive: true });
  writeFileSync(path.join(broken, 'config.json'), '{"model_type": "bd3lm", "vocab_size": ');
  copyFileSync(path.join(root, 'tests/fixtures/tiny-a/model.safetensors'), path.join(broken, 'model.safetensors'));
  // `serve` exposes only the page, web/ and model folders: the fixture and the broken folder are
  // served as extra model folders.
  ({ server, base } = await startServe(['--extra-model', `tiny-a=${path.join(root, 'tests/fixtures/tiny-a')}`, '--extra-model', `broken=${broken}`]));
  context = await launchBrowser('page', { viewport: { width: 1100, height: 900 } });
});

after(async () => {
  await context?.close();
  server?.kill();
});

const openPage = (query = '') => openTab(context, base, query);

async function loadDefault(page) {
  await page.selectOption('#model-choice', 'default');
  await loadChosen(page);
}

async function loadUrl(page, url) {
  await page.selectOption('#model-choice', 'url');
  await page.fill('#model-url', url);
  await loadChosen(page);
}

async function loadChosen(page) {
  await page.click('#load-btn');
  await page.waitForFunction(() => window.bd3.loaded || window.bd3.error, null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => window.bd3.error), null);
}

test('the fixture checks of `bd3-wgpu verify` pass with the browser compiling the kernels', async () => {
  const page = await openPage('?selftest=verify');
  await page.waitForFunction(() => window.bd3.verify || window.bd3.error, null, { timeout: 300_000 });
  const { verify, error } = await page.evaluate(() => ({ verify: window.bd3.verify, error: window.bd3.error }));
  assert.equal(error, null);
  const last = verify.trim().split('\n').pop();
  const m = /^(\d+) passed, (\d+) failed$/.exec(last);
  assert.ok(m, verify);
  assert.equal(m[2], '0', verify.split('\n').filter((l) => l.includes('FAIL')).join('\n'));
  assert.ok(Number(m[1]) >= 150, `only ${m[1]} checks ran`);
  await page.close();
});

test('the page generates the same tokens as the native binary for the same model, prompt and seed', async () => {
  const native = execFileSync(bin, ['sample', '--model', path.join(root, 'tests/fixtures/tiny-a'), '--seed', '7', '--length', '40', '--prompt-ids', '5,6,7'], { encoding: 'utf8' });
  const page = await openPage();
  await loadUrl(page, base + 'models/tiny-a/');
  await page.fill('#prompt', '5,6,7');
  await page.fill('#length', '40');
  await page.fill('#seed', '7');
  await page.click('#gen-btn');
  await page.waitForFunction(() => window.bd3.result || window.bd3.error, null, { timeout: 120_000 });
  const tokens = await page.evaluate(() => window.bd3.result.tokens[0].join(' '));
  assert.equal(tokens, native.trim().split('\n')[0].trim());
  await page.close();
});

test('the confidence samplers give the same tokens and NFEs in the page as in the native binary', async () => {
  const page = await openPage();
  await loadUrl(page, base + 'models/tiny-a/');
  for (const [sampler, flag, input, value] of [
    ['confidence', '--tokens-per-call', '#tokens-per-call', '3'],
    ['confidence-threshold', '--confidence-threshold', '#confidence-threshold', '0.05'],
  ]) {
    const args = ['sample', '--model', path.join(root, 'tests/fixtures/tiny-a'), '--seed', '11', '--length', '40', '--prompt-ids', '5,6,7', '--sampler', sampler, flag, value];
    const native = spawnSync(bin, args, { encoding: 'utf8' });
    assert.equal(native.status, 0, native.stderr);
    const nfe = /(\d+) NFEs/.exec(native.stderr);
    assert.ok(nfe, native.stderr);
    await page.selectOption('#sampler', sampler);
    assert.equal(await page.isVisible(input), true, `${input} is offered with ${sampler}`);
    await page.fill(input, value);
    await page.fill('#prompt', '5,6,7');
    await page.fill('#length', '40');
    await page.fill('#seed', '11');
    await page.click('#gen-btn');
    await page.waitForFunction(() => window.bd3.result || window.bd3.error, null, { timeout: 120_000 });
    const r = await page.evaluate(() => ({ tokens: window.bd3.result?.tokens[0].join(' '), nfe: window.bd3.result?.nfe, error: window.bd3.error }));
    assert.equal(r.error, null);
    assert.equal(r.tokens, native.stdout.trim().split('\n')[0].trim(), sampler);
    assert.equal(r.nfe, Number(nfe[1]), `${sampler}: NFEs`);
    // 9 blocks of 4 masked positions after BOS and the prompt, 3 revealed per call: 2 calls each.
    if (sampler === 'confidence') assert.equal(r.nfe, 18);
  }
  await page.close();
});

test('a user loads the model, generates, watches blocks fill, and stops', async () => {
  const page = await openPage();
  await loadDefault(page);
  assert.match(await page.textContent('#load-status'), /Loaded: bd3lm/);
  // Weights default to auto: headless Chromium's adapter lacks shader-f16, so the page keeps f32
  // and says why.
  assert.equal(await page.inputValue('#weights'), 'auto');
  assert.match(await page.textContent('#load-status'), /weights f32 \(this adapter lacks shader-f16\)/);
  // A long generation: screenshot mid-way (masked, fresh and committed tokens visible), then Stop.
  await page.fill('#length', '4000');
  await page.click('#gen-btn');
  await page.waitForFunction(() => window.bd3.events >= 40, null, { timeout: 120_000 });
  await page.screenshot({ path: path.join(shots, 'page-mid-generation.png'), fullPage: true });
  const classes = await page.$$eval('#output .tok', (els) => [...new Set(els.map((e) => e.className))]);
  assert.ok(classes.includes('tok committed'), classes.join());
  await page.click('#stop-btn');
  await page.waitForFunction(() => window.bd3.result, null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => window.bd3.result.stopped), true);
  assert.match(await page.textContent('#gen-status'), /Stopped/);
  // A complete generation with a prompt: the bundled model writes words of its corpus (as
  // `bd3-wgpu sample` must, tests/sample_cli.rs): at least MIN_KNOWN_WORDS of them are in the word
  // list of the text its tokenizer was trained on. Uniformly random tokens score about 0.54.
  await page.fill('#prompt', 'The computer');
  await page.fill('#length', '96');
  await page.fill('#seed', '3');
  await page.uncheck('#var-length');
  await page.click('#gen-btn');
  await page.waitForFunction(() => window.bd3.result && !window.bd3.generating, null, { timeout: 300_000 });
  const out = await page.textContent('#output');
  assert.match(await page.textContent('#gen-status'), /Done: \d+ NFEs/);
  const list = new Set(readFileSync(path.join(root, 'models/fortunes-bd3lm/words.txt'), 'utf8').split('\n'));
  const words = out.replaceAll('<|endoftext|>', ' ').split(/[^A-Za-z]+/).filter(Boolean).map((w) => w.toLowerCase());
  assert.ok(words.length >= 40, `too little text: ${out}`);
  const share = words.filter((w) => list.has(w)).length / words.length;
  assert.ok(share >= MIN_KNOWN_WORDS, `only ${share.toFixed(2)} of the words are in the corpus's word list: ${out}`);
  await page.screenshot({ path: path.join(shots, 'page-after-generation.png'), fullPage: true });
  await page.close();
});

// The bar of tests/sample_cli.rs (MIN_KNOWN_WORDS there).
const MIN_KNOWN_WORDS = 0.75;

test('a broken model folder shows a readable error', async () => {
  const page = await openPage();
  await page.selectOption('#model-choice', 'url');
  await page.fill('#model-url', base + 'models/broken/');
  await page.click('#load-btn');
  await page.waitForFunction(() => window.bd3.error, null, { timeout: 60_000 });
  const text = await page.textContent('#error');
  assert.match(text, /config\.json: not valid JSON/);
  assert.equal(await page.isVisible('#error'), true);
  await page.close();
});
