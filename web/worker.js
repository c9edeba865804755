// The Web Worker that owns the GPU: loads models (streaming model.safetensors to the GPU one tensor at
// a time, through the Cache API), generates, and runs the fixture checks. The page never blocks.
import init, { Engine, requestStop } from './pkg/bd3_web.js';

const CACHE = 'bd3-wgpu-models-v1';
let engine = null;
let testHooks = false;
const post = (m, transfer) => self.postMessage(m, transfer || []);

// The wasm panic hook calls this (crates/bd3-web: start()). After a panic the module instance is
// unusable (its borrows and allocator state are wherever the panic left them): the page is told,
// and replaces this worker with a fresh one (web/app.js). Posted at once, since a panic inside an
// async call may never settle its promise.
let panicked = false;
self.bd3Panic = (message) => {
  if (!panicked) post({ type: 'panic', message: String(message) });
  panicked = true;
};

// A failure of the download itself (the network, a truncated body): worth retrying. Anything
// else — a malformed file, a validation error — is reported at once.
class Transient extends Error {}

self.onmessage = async (e) => {
  const m = e.data;
  if (panicked) { post({ type: 'error', message: 'the engine has crashed; it is being restarted' }); return; }
  try {
    if (m.type === 'stop') { requestStop(); return; }
    if (m.type === 'finetuneStop') { finetuneStop = true; return; }
    if (m.type === 'debugPanic') {
      if (!testHooks) throw new Error('debugPanic is a test hook (open the page with ?selftest=panic)');
      engine.debugPanic();
      return;
    }
    if (m.type === 'init') {
      testHooks = !!m.testHooks;
      await init();
      if (!self.navigator.gpu) throw new Error('WebGPU is not available in this browser (navigator.gpu is missing).');
      engine = await Engine.create();
      post({ type: 'ready', adapter: engine.adapter() });
    } else if (m.type === 'load') {
      const info = await loadModel(m.source, m.weights);
      post({ type: 'loaded', info });
    } else if (m.type === 'generate') {
      const started = performance.now();
      const result = await engine.generate(m.options, (ev) => post({ type: 'event', ev, ms: performance.now() - started }));
      post({ type: 'done', result });
    } else if (m.type === 'finetune') {
      await finetune(m.run);
    } else if (m.type === 'finetuneExport') {
      const files = await engine.finetuneExport();
      post({ type: 'ft-export', files }, [files.model.buffer]);
    } else if (m.type === 'verify') {
      const files = {};
      for (const name of m.files) {
        const r = await fetch(m.base + name);
        if (!r.ok) throw new Error(`${m.base + name}: HTTP ${r.status}`);
        files[name] = new Uint8Array(await r.arrayBuffer());
      }
      post({ type: 'verified', text: await engine.verify(files) });
    }
  } catch (err) {
    // A trap (a panic aborts into `unreachable`, or an out-of-bounds access) leaves the instance
    // unusable, like a panic: the page replaces the worker.
    if (err instanceof WebAssembly.RuntimeError) self.bd3Panic(`the wasm engine trapped: ${describe(err)}`);
    else post({ type: 'error', message: describe(err) });
  }
};

function describe(err) {
  const msg = String((err && err.message) || err);
  if (err && err.name === 'QuotaExceededError') return `The browser's storage quota is exhausted: ${msg}`;
  if (/out of memory|OutOfMemory|allocation/i.test(msg)) return `The GPU ran out of memory: ${msg}`;
  return msg;
}

// A folder of files: from URLs (with the Cache API) or from File objects the user chose.
function folder(source) {
  if (source.kind === 'files') {
    const byName = {};
    for (const f of source.files) byName[f.name] = f;
    return {
      describe: 'the chosen files',
      async text(name, optional) {
        const f = byName[name];
        if (!f) { if (optional) return null; throw new Error(`${name} is missing among the chosen files`); }
        return f.text();
      },
      async size(name) { return byName[name] ? byName[name].size : 0; },
      async stream(name) {
        const f = byName[name];
        if (!f) throw new Error(`${name} is missing among the chosen files`);
        return { body: f.stream(), length: f.size, done: async () => {} };
      },
    };
  }
  const base = source.base.endsWith('/') ? source.base : source.base + '/';
  return {
    describe: base,
    async text(name, optional) {
      const r = await fetch(base + name);
      if (!r.ok) { if (optional && r.status === 404) return null; throw new Error(`${base + name}: HTTP ${r.status} ${r.statusText}`); }
      return r.text();
    },
    async size(name) {
      const r = await fetch(base + name, { method: 'HEAD' });
      if (!r.ok) throw new Error(`${base + name}: HTTP ${r.status} ${r.statusText}`);
      return Number(r.headers.get('x-linked-size') || r.headers.get('content-length') || 0);
    },
    async stream(name) {
      // The Cache API keeps the weights across reloads; a cached entry is complete by construction
      // (put() only commits a fully received body), and a truncated read below drops it.
      const url = base + name;
      let cache = null;
      try { cache = await caches.open(CACHE); } catch { /* no Cache API (e.g. not a secure context) */ }
      let r = cache ? await cache.match(url) : undefined;
      if (r && !(await stillCurrent(url, r))) {
        // The file behind the URL changed since it was cached (a new model at the same address).
        await cache.delete(url);
        r = undefined;
      }
      const cached = !!r;
      if (!r) {
        try { r = await fetch(url); } catch (err) { throw new Transient(`${url}: ${describe(err)}`); }
        if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`);
        if (cache) {
          cache.put(url, r.clone()).catch((err) => post({ type: 'status', text: `not cached (${describe(err)}); it will be downloaded again next time` }));
        }
      }
      // The length the data_offsets are checked against (null: the server did not say).
      // A compressed response's Content-Length counts the compressed bytes: unknown then.
      const encoded = (r.headers.get('content-encoding') || 'identity') !== 'identity';
      const length = r.headers.get('content-length') === null || encoded ? null : Number(r.headers.get('content-length'));
      return { body: r.body, length, cached, done: async (ok) => { if (!ok && cache) await cache.delete(url); } };
    },
  };
}

// Whether a cached response still matches the server's file: same ETag (or Last-Modified, or size).
// Offline (the HEAD fails), the cached copy is used.
async function stillCurrent(url, cached) {
  let head;
  try { head = await fetch(url, { method: 'HEAD', cache: 'no-store' }); } catch { return true; }
  if (!head.ok) return true;
  for (const h of ['etag', 'last-modified']) {
    const was = cached.headers.get(h), now = head.headers.get(h);
    if (was || now) return was === now;
  }
  const size = (x) => x.headers.get('x-linked-size') || x.headers.get('content-length');
  return size(cached) === size(head);
}

// Reads exact byte counts from a stream. Failures of the stream itself are Transient.
function byteReader(body, onBytes) {
  const reader = body.getReader();
  let chunks = [], have = 0, total = 0;
  const pull = async () => {
    let r;
    try { r = await reader.read(); } catch (err) { throw new Transient(`the download failed after ${total} bytes: ${describe(err)}`); }
    if (!r.done) { chunks.push(r.value); have += r.value.length; total += r.value.length; onBytes(total); }
    return !r.done;
  };
  return {
    async read(n) {
      while (have < n) {
        if (!(await pull())) throw new Transient(`the download ended early (${total} bytes received)`);
      }
      const out = new Uint8Array(n);
      let off = 0;
      while (off < n) {
        const c = chunks[0], take = Math.min(c.length, n - off);
        out.set(c.subarray(0, take), off); off += take;
        if (take === c.length) chunks.shift(); else chunks[0] = c.subarray(take);
      }
      have -= n;
      return out;
    },
    // Whether the stream holds nothing more (reads at most one more chunk).
    async atEnd() { return have === 0 && !(await pull()); },
    cancel() { reader.cancel().catch(() => {}); },
    total: () => total,
  };
}

// `weights`: 'auto', 'f32' or 'f16' (how the engine stores the matrices).
async function loadModel(source, weights) {
  const dir = folder(source);
  post({ type: 'status', text: `Reading config.json from ${dir.describe}…` });
  const config = await dir.text('config.json');
  let tokenizer = await dir.text('tokenizer.json', true);
  if (tokenizer === null && source.tokenizerUrl) {
    const r = await fetch(source.tokenizerUrl);
    if (!r.ok) throw new Error(`${source.tokenizerUrl}: HTTP ${r.status}`);
    tokenizer = await r.text();
  }
  const size = await dir.size('model.safetensors');
  post({ type: 'size', bytes: size });
  for (let attempt = 1; ; attempt++) {
    const s = await dir.stream('model.safetensors');
    try {
      const info = await streamWeights(s, config, tokenizer, s.length ?? (size || null), weights);
      await s.done(true);
      return info;
    } catch (err) {
      await s.done(false);
      if (!(err instanceof Transient) || attempt >= 3 || source.kind === 'files') throw err;
      post({ type: 'status', text: `download interrupted (${describe(err)}); retrying (${attempt + 1}/3)…` });
    }
  }
}

// `length`: the file's length in bytes, or null when unknown.
async function streamWeights(s, config, tokenizer, length, weights) {
  const r = byteReader(s.body, (n) => post({ type: 'progress', bytes: n, total: length || 0 }));
  try {
    const lenBytes = await r.read(8);
    const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (headerLen > 100_000_000n) throw new Error('model.safetensors: not a safetensors file (header too large)');
    if (length !== null && 8 + Number(headerLen) > length) {
      throw new Error(`model.safetensors: the header (${headerLen} bytes) runs past the end of the file (${length} bytes)`);
    }
    const header = await r.read(Number(headerLen));
    post({ type: 'status', text: 'Compiling shaders…' });
    // Checks the tensors against the config and their data_offsets against the file's length, as
    // the native loader does: from here on, the tensors tile the data section exactly.
    const order = await engine.beginLoad(config, header, tokenizer, length ?? undefined, weights ?? 'auto');
    post({ type: 'status', text: `Streaming ${order.length} tensors to the GPU${s.cached ? ' (from the browser cache)' : ''}…` });
    let at = 0;
    for (const t of order) {
      if (t.begin !== at) throw new Error(`model.safetensors: tensor \`${t.name}\` does not start where the previous one ends`);
      const bytes = await r.read(t.end - t.begin);
      at = t.end;
      engine.putTensor(t.name, t.dtype, bytes);
    }
    if (length === null && !(await r.atEnd())) throw new Error('model.safetensors: trailing bytes after the last tensor');
    return engine.finishLoad();
  } finally {
    r.cancel();
  }
}

// ---- fine-tuning (engine.finetune*, crates/bd3-web/src/finetune.rs) ----
// The steps of `bd3-wgpu train --init`: validation (EMA weights) at step 0, every `valEvery` steps
// and after the last step, as the native loop does. Stop takes effect after the current step; the
// run then ends as if --steps had been the steps finished, and the EMA weights become the model's.
let finetuneStop = false;
async function finetune(run) {
  finetuneStop = false;
  let texts = run.texts;
  if (run.dataUrl) {
    const r = await fetch(run.dataUrl);
    if (!r.ok) throw new Error(`${run.dataUrl}: HTTP ${r.status} ${r.statusText}`);
    texts = [await r.text()];
  }
  const s = run.settings;
  const prep = await engine.finetunePrepare(texts, s);
  post({ type: 'ft-prepared', prep });
  const validating = prep.validChunks > 0;
  const validate = async (step) => post({ type: 'ft-valid', step, nelbo: await engine.finetuneValidate() });
  if (validating) await validate(0);
  const started = performance.now();
  let done = 0;
  while (done < s.steps && !finetuneStop) {
    const r = await engine.finetuneStep();
    done = r.step;
    post({ type: 'ft-step', step: r.step, loss: r.loss, lr: r.lr, elapsed: performance.now() - started });
    if (validating && s.valEvery > 0 && (done % s.valEvery === 0 || done === s.steps)) await validate(done);
  }
  // Stopped early: the run is the one of --steps `done`, whose last step is validated too.
  if (validating && s.valEvery > 0 && done < s.steps && done > 0 && done % s.valEvery !== 0) await validate(done);
  engine.finetuneFinish();
  post({ type: 'ft-done', steps: done, stopped: done < s.steps });
}
