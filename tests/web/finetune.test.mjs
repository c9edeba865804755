// Fine-tuning in the page (issue 16), in headless Chromium (WebGPU on SwiftShader) against
// `bd3-wgpu serve`: the page's per-step losses equal the native `bd3-wgpu train` run of the command
// line it shows; a user pastes text, trains, watches the curve, stops, generates and downloads a
// checkpoint that `bd3-wgpu sample` loads and samples the page's tokens from; a text too short for
// one chunk is refused in words. Kept short (batch 1, a few steps): SwiftShader is slow.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { root, bin, startServe, launchBrowser, openPage as openTab } from './harness.mjs';
import { mkdirSync, writeFileSync, copyFileSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

const bundled = path.join(root, 'models/fortunes-bd3lm');
const work = path.join(root, 'target/web/finetune');
const dataDir = path.join(work, 'data');
// Relative agreement asked of the page's losses against the native run's.
const TOLERANCE = 1e-4;
let server, context, base;

// A corpus in fortune format (documents between `%` lines), varied enough to make several chunks of
// the bundled model's 128 tokens, with 20 documents so that one is held out for validation.
function corpus() {
  const subjects = ['The computer', 'A program', 'Every user', 'The network', 'Our manager', 'The compiler', 'A fortune', 'The printer'];
  const verbs = ['never forgets', 'always answers', 'rarely explains', 'quietly breaks', 'happily ignores', 'slowly rewrites'];
  const objects = ['the last question', 'a small bug', 'the morning meeting', 'every old file', 'the long weekend', 'its own manual'];
  const docs = [];
  for (let d = 0; d < 20; d++) {
    const lines = [];
    for (let s = 0; s < 12; s++) lines.push(`${subjects[(d + s) % 8]} ${verbs[(d * 3 + s) % 6]} ${objects[(d + 2 * s) % 6]}.`);
    docs.push(lines.join(' '));
  }
  return docs.join('\n%\n') + '\n';
}

before(async () => {
  rmSync(work, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  // `serve` only serves model folders: the texts travel in one (with the config it requires).
  copyFileSync(path.join(bundled, 'config.json'), path.join(dataDir, 'config.json'));
  writeFileSync(path.join(dataDir, 'data.txt'), corpus());
  ({ server, base } = await startServe(['--model', bundled, '--extra-model', `fortunes=${bundled}`, '--extra-model', `ftdata=${dataDir}`]));
  context = await launchBrowser('finetune', { viewport: { width: 1100, height: 1400 }, acceptDownloads: true });
});

after(async () => {
  await context?.close();
  server?.kill();
});

/** The page's command line with this machine's paths for its model, text, output and metrics. */
function nativeArgs(command, out, metrics) {
  const args = command.split(' ');
  assert.deepEqual(args.slice(0, 2), ['bd3-wgpu', 'train'], command);
  const local = { '--init': bundled, '--data': path.join(dataDir, 'data.txt'), '--out': out, '--metrics': metrics };
  return args.slice(1).map((a, i, all) => local[all[i - 1]] ?? a);
}

function metricsOf(file) {
  return readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

function assertClose(page, native, what) {
  assert.equal(page.length, native.length, `${what}: ${page} vs ${native}`);
  page.forEach((p, i) => {
    const rel = Math.abs(p - native[i]) / Math.abs(native[i]);
    assert.ok(rel <= TOLERANCE, `${what} ${i + 1}: page ${p}, native ${native[i]} (relative ${rel.toExponential(2)})`);
  });
}

test('the self-test fine-tunes with the losses of the native run of its command', async () => {
  const page = await openTab(context, base, `?selftest=finetune&model=${base}models/fortunes/&data=${base}models/ftdata/data.txt&steps=3&seed=5&batch=1&lr=0.0003`);
  await page.waitForFunction(() => window.bd3.finetune.done || window.bd3.finetune.error, null, { timeout: 600_000 });
  const ft = await page.evaluate(() => ({ losses: window.bd3.finetune.losses, valid: window.bd3.finetune.valid, command: window.bd3.finetune.command, error: window.bd3.finetune.error }));
  await page.close();
  assert.equal(ft.error, null);
  assert.equal(ft.losses.length, 3);
  assert.match(ft.command, /^bd3-wgpu train --init fortunes --data data\.txt .*--steps 3 --batch 1 .*--lr 0\.0003 .*--seed 5 .*--dropout 0\.1 /);
  const out = path.join(work, 'native-out');
  const metrics = path.join(work, 'native-metrics.jsonl');
  execFileSync(bin, nativeArgs(ft.command, out, metrics), { stdio: ['ignore', 'ignore', 'inherit'] });
  const lines = metricsOf(metrics);
  const native = lines.filter((l) => 'loss' in l).map((l) => l.loss);
  const nativeValid = lines.filter((l) => 'val_nelbo' in l).map((l) => [l.step, l.val_nelbo]);
  const rel = ft.losses.map((p, i) => Math.abs(p - native[i]) / Math.abs(native[i]));
  console.log(`page losses ${ft.losses.join(', ')}\nnative losses ${native.join(', ')}\nrelative differences ${rel.map((r) => r.toExponential(2)).join(', ')}`);
  console.log(`page validation ${JSON.stringify(ft.valid)}\nnative validation ${JSON.stringify(nativeValid)}`);
  assertClose(ft.losses, native, 'loss of step');
  // The validation NELBO (EMA weights) at the same steps, too.
  assert.deepEqual(ft.valid.map((v) => v[0]), nativeValid.map((v) => v[0]));
  assertClose(ft.valid.map((v) => v[1]), nativeValid.map((v) => v[1]), 'validation NELBO');
});

test('a user fine-tunes on pasted text, watches the curve, stops, generates and downloads the checkpoint', async () => {
  const page = await openTab(context, base);
  await page.selectOption('#model-choice', 'default');
  await page.click('#load-btn');
  await page.waitForFunction(() => window.bd3.loaded || window.bd3.error, null, { timeout: 120_000 });
  assert.equal(await page.evaluate(() => window.bd3.error), null);

  // A text too short to make one chunk of the model's 128 tokens: refused in words.
  await page.fill('#ft-text', 'Too short to train on.');
  await page.click('#ft-train');
  await page.waitForFunction(() => window.bd3.finetune.error, null, { timeout: 120_000 });
  const short = await page.textContent('#error');
  assert.match(short, /the text is too short to train on: it makes \d+ tokens.*fewer than one chunk of 128 tokens/);
  assert.equal(await page.isVisible('#error'), true);

  // Train on a real text, stop after a few steps.
  await page.fill('#ft-text', corpus());
  await page.fill('#ft-steps', '40');
  await page.fill('#ft-batch', '1');
  await page.fill('#ft-lr', '0.0003');
  await page.fill('#ft-seed', '2');
  await page.click('#ft-train');
  await page.waitForFunction(() => window.bd3.finetune.losses.length >= 4 || window.bd3.finetune.error, null, { timeout: 600_000 });
  assert.equal(await page.evaluate(() => window.bd3.finetune.error), null);
  assert.match(await page.textContent('#ft-stats'), /step \d+\/40 · loss [\d.]+ · lr .* tokens\/s · ETA \d+ s/);
  await page.click('#ft-stop');
  await page.waitForFunction(() => window.bd3.finetune.done, null, { timeout: 300_000 });
  const ft = await page.evaluate(() => ({ steps: window.bd3.finetune.losses.length, valid: window.bd3.finetune.valid, command: window.bd3.finetune.command }));
  assert.ok(ft.steps >= 4 && ft.steps < 40, `${ft.steps} steps`);
  assert.match(await page.textContent('#ft-status'), new RegExp(`Stopped after ${ft.steps} step`));
  // The command is that of the steps finished; validation ran at step 0 and at the last step.
  assert.match(ft.command, new RegExp(`--steps ${ft.steps} `));
  assert.equal(ft.valid[0][0], 0);
  assert.equal(ft.valid.at(-1)[0], ft.steps);
  // The curve is drawn: pixels of the loss line's colour (#3355cc) inside the plot.
  const blue = await page.$eval('#ft-curve', (c) => {
    const d = c.getContext('2d').getImageData(47, 20, c.width - 58, c.height - 45).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 90 && d[i + 1] > 60 && d[i + 1] < 120 && d[i + 2] > 170) n++;
    return n;
  });
  assert.ok(blue > 30, `only ${blue} pixels of the loss line`);
  await (await page.$('#finetune')).screenshot({ path: path.join(root, 'docs/finetune-curve.png') });

  // Generate with the fine-tuned weights.
  await page.fill('#prompt', '5,6,7');
  await page.fill('#length', '40');
  await page.fill('#seed', '7');
  await page.uncheck('#var-length');
  await page.click('#gen-btn');
  await page.waitForFunction(() => window.bd3.result && !window.bd3.generating, null, { timeout: 300_000 });
  const result = await page.evaluate(() => ({ tokens: window.bd3.result.tokens[0], text: window.bd3.result.text[0] }));

  // Download the checkpoint: three files, which `bd3-wgpu sample` loads and samples the same tokens from.
  const ckpt = path.join(work, 'downloaded');
  mkdirSync(ckpt, { recursive: true });
  const downloads = [];
  page.on('download', (d) => downloads.push(d));
  await page.click('#ft-download');
  await page.waitForFunction(() => window.bd3.finetune.files, null, { timeout: 120_000 });
  for (let i = 0; i < 100 && downloads.length < 3; i++) await page.waitForTimeout(100);
  assert.deepEqual(downloads.map((d) => d.suggestedFilename()).sort(), ['config.json', 'model.safetensors', 'tokenizer.json']);
  for (const d of downloads) await d.saveAs(path.join(ckpt, d.suggestedFilename()));
  await page.close();
  // The native sample prints text (this model has a tokenizer); its trace gives the tokens revealed.
  const trace = path.join(work, 'sample-trace.jsonl');
  const native = execFileSync(bin, ['sample', '--model', ckpt, '--seed', '7', '--length', '40', '--prompt-ids', '5,6,7', '--steps', '16', '--top-p', '0.9', '--trace', trace], { encoding: 'utf8' });
  assert.equal(result.text, native.replace(/\n$/, ''));
  const revealed = metricsOf(trace).filter((e) => e.event === 'revealed').flatMap((e) => e.revealed).filter(([seq]) => seq === 0);
  assert.equal(revealed.length, 40 - 4, 'every generated position is revealed once');
  for (const [, pos, tok] of revealed) assert.equal(result.tokens[pos], tok, `position ${pos}`);
  // And the checkpoint is the fine-tuned one, not the bundled model.
  assert.notDeepEqual(readFileSync(path.join(ckpt, 'model.safetensors')), readFileSync(path.join(bundled, 'model.safetensors')));
});
