// What the page tests share: the repository's paths, `bd3-wgpu serve` on a free loopback port, and
// headless Chromium with WebGPU (SwiftShader) in a profile of its own. Not a test file itself.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

export const root = path.resolve(import.meta.dirname, '../..');
export const bin = process.env.BD3_WGPU_BIN || path.join(root, 'target/debug/bd3-wgpu');
const require = createRequire(path.join(root, 'target/web/package.json'));
const { chromium } = require('playwright-core');

/** `bd3-wgpu serve` with `args` on a free port; resolves to { server, base } once it listens. */
export async function startServe(args) {
  const server = spawn(bin, ['serve', '--port', '0', '--root', root, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const base = await new Promise((resolve, reject) => {
    server.stdout.on('data', (d) => {
      const m = /serving (http:\/\/127\.0\.0\.1:\d+\/)/.exec(String(d));
      if (m) resolve(m[1]);
    });
    server.on('exit', (c) => reject(new Error(`bd3-wgpu serve exited with ${c}`)));
  });
  return { server, base };
}

/** Headless Chromium with WebGPU, in a fresh profile named after the test file and process. */
export async function launchBrowser(name, options = {}) {
  const profile = path.join(root, `target/web/chrome-profile-${name}-${process.pid}`);
  rmSync(profile, { recursive: true, force: true });
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--enable-unsafe-webgpu'],
    ...options,
  });
}

/** A new tab on the page (with `query`), once its GPU worker is up. */
export async function openPage(context, base, query = '') {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log('page error:', e.message));
  await page.goto(base + 'index.html' + query);
  await page.waitForFunction(() => window.bd3.ready || window.bd3.error, null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => window.bd3.error), null, 'the GPU worker did not start');
  return page;
}
