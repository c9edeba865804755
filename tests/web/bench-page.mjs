// A benchmark, not a test: milliseconds per model call in the page (headless Chromium, WebGPU on
// SwiftShader here) for the bundled model, first-hitting, as the page reports them in #gen-status.
//
//   node tests/web/bench-page.mjs [ROOT ...]
//
// Each ROOT is a checkout whose web/pkg is built (scripts/build-web.sh) and which has
// models/default; the default is this repository. Several roots are measured in one run, alternately
// (ROUNDS rounds, default 2), so a before/after comparison sees the same machine load. LENGTH
// (default 128) tokens per sample; WEIGHTS (default auto) is the page's Weights choice.
import { spawn } from 'node:child_process';
import { bin, launchBrowser, openPage, root as here } from './harness.mjs';

/** `bd3-wgpu serve` of `rootDir` on a free port (the harness's startServe serves this checkout). */
function serve(rootDir) {
  const server = spawn(bin, ['serve', '--port', '0', '--root', rootDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    server.stdout.on('data', (d) => {
      const m = /serving (http:\/\/127\.0\.0\.1:\d+\/)/.exec(String(d));
      if (m) resolve({ server, base: m[1] });
    });
    server.on('exit', (c) => reject(new Error(`bd3-wgpu serve exited with ${c}`)));
  });
}

const roots = process.argv.slice(2).length ? process.argv.slice(2) : [here];
const rounds = Number(process.env.ROUNDS || 2);
const length = String(process.env.LENGTH || 128);
const weights = process.env.WEIGHTS || 'auto';

async function measure(rootDir) {
  const { server, base } = await serve(rootDir);
  const context = await launchBrowser('bench');
  try {
    const page = await openPage(context, base);
    if (await page.$('#weights')) await page.selectOption('#weights', weights);
    await page.click('#load-btn');
    await page.waitForFunction(() => window.bd3.loaded || window.bd3.error, null, { timeout: 300_000 });
    const status = await page.textContent('#load-status');
    await page.fill('#length', length);
    await page.fill('#seed', '1');
    // A warm-up generation records every program shape and compiles the pipelines.
    for (const phase of ['warm-up', 'timed']) {
      await page.click('#gen-btn');
      await page.waitForFunction(() => window.bd3.result || window.bd3.error, null, { timeout: 600_000 });
      const r = await page.evaluate(() => window.bd3.result);
      if (phase === 'timed') return { status, ms: r.ms, calls: r.calls, adapter: await page.textContent('#adapter') };
      await page.evaluate(() => { window.bd3.result = null; });
    }
  } finally {
    await context.close();
    server.kill();
  }
}

for (let round = 1; round <= rounds; round++) {
  for (const dir of roots) {
    const r = await measure(dir);
    console.log(`${dir}: ${(r.ms / r.calls).toFixed(2)} ms per model call (${r.calls} calls, ${(r.ms / 1000).toFixed(2)} s; round ${round}; ${r.status}; ${r.adapter})`);
  }
}
