// The page: controls, the block-diffusion view, and the messages to the GPU worker (web/worker.js).
// Tests read window.bd3 (state, last result, events, the status lines) and can run the fixture checks
// with ?selftest=verify (served by `bd3-wgpu serve --extra-model tiny-a=tests/fixtures/tiny-a`), or
// crash the engine on purpose with ?selftest=panic and window.bd3.debugPanic(). ?selftest=finetune
// fine-tunes a model on a text (see the fine-tuning section at the end) and sets window.bd3.finetune.

const $ = (id) => document.getElementById(id);
const state = { ready: false, loaded: false, generating: false, info: null, result: null, events: 0, error: null, verify: null, adapter: null, statuses: [], restarts: 0 };
window.bd3 = state;
const selftest = new URLSearchParams(location.search).get('selftest');

const HF = (repo) => `https://huggingface.co/${repo}/resolve/main/`;
// The official checkpoints ship no tokenizer.json; they use GPT-2's.
const GPT2_TOKENIZER = 'https://huggingface.co/gpt2/resolve/main/tokenizer.json';

function showError(text) {
  state.error = text;
  $('error').textContent = text;
  $('error').hidden = false;
}
function clearError() { state.error = null; $('error').hidden = true; }
function fmtBytes(n) { return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`; }

if (!navigator.gpu) {
  $('unsupported').hidden = false;
  $('load-btn').disabled = true;
  state.error = 'WebGPU is not available';
}

// The GPU worker. A panic in the wasm engine leaves its instance unusable, so the worker is replaced
// by a fresh one (a new wasm instance and GPU device) — unless it never got ready, so that a worker
// that cannot start is not restarted in a loop.
let worker = null;
function startWorker() {
  const w = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  w.onerror = (e) => {
    if (w !== worker) return;
    e.preventDefault();
    restartWorker(`The GPU worker failed: ${e.message}`);
  };
  w.onmessage = (e) => { if (w === worker) handle(e.data); };
  w.postMessage({ type: 'init', testHooks: selftest === 'panic' });
  worker = w;
}
function restartWorker(why) {
  const wasReady = state.ready;
  worker.terminate();
  worker = null;
  state.ready = false; state.loaded = false; state.generating = false;
  $('gen-btn').disabled = true; $('stop-btn').disabled = true; $('load-btn').disabled = true;
  $('load-progress').hidden = true;
  $('load-status').textContent = 'Not loaded.';
  if (!wasReady) { showError(why); return; }
  state.restarts++;
  showError(`${why}\nThe GPU engine was restarted: load the model again.`);
  startWorker();
}
if (selftest === 'panic') state.debugPanic = () => worker.postMessage({ type: 'debugPanic' });
startWorker();

// ---- the block-diffusion view ----
let cells = [];   // per position: {text, state}
let blockSize = 1;
function render() {
  const out = $('output');
  out.textContent = '';
  for (const c of cells) {
    const span = document.createElement('span');
    // The end-of-text token separates documents: shown as a marker and a line break.
    const eos = c.text === '<|endoftext|>';
    span.className = `tok ${c.state}${eos ? ' eos' : ''}`;
    span.textContent = c.state === 'masked' ? '▒' : eos ? '¶\n' : c.text;
    out.appendChild(span);
  }
}
function onEvent(ev, ms) {
  state.events++;
  if (ev.type === 'revealed') {
    for (const c of cells) if (c.state === 'fresh') c.state = 'revealed';
    for (const [seq, pos, _tok, text] of ev.revealed) {
      if (seq !== 0) continue;
      while (cells.length <= pos) cells.push({ text: '', state: 'masked' });
      cells[pos] = { text, state: 'fresh' };
    }
  } else if (ev.type === 'committed') {
    cells = ev.pieces.map((text) => ({ text, state: 'committed' }));
    if (cells.length) cells[0].text = ''; // BOS
    const next = Math.min(ev.end + blockSize, +$('length').value);
    for (let p = ev.end; p < next; p++) cells.push({ text: '', state: 'masked' });
  }
  render();
  const tokens = cells.filter((c) => c.state !== 'masked').length;
  $('stats').textContent = `${state.events} steps · ${(1000 * tokens / Math.max(ms, 1)).toFixed(1)} tokens/s · ${state.adapter || ''}`;
}

function handle(m) {
  if (m.type.startsWith('ft-')) return handleFinetune(m);
  switch (m.type) {
    case 'ready':
      state.ready = true; state.adapter = m.adapter;
      $('adapter').textContent = `GPU: ${m.adapter}`;
      $('load-btn').disabled = !navigator.gpu;
      // Once: after a restart the checks are not re-run (a panic in them would restart forever).
      if (selftest === 'verify' && state.restarts === 0) selftestVerify();
      if (selftest === 'finetune' && state.restarts === 0) selftestFinetune();
      break;
    case 'panic': restartWorker(`The GPU engine crashed: ${m.message}`); break;
    case 'status':
      $('load-status').textContent = m.text;
      state.statuses.push(m.text);
      if (state.statuses.length > 200) state.statuses.shift();
      break;
    case 'size':
      $('load-status').textContent = `Downloading ${fmtBytes(m.bytes)}…`;
      $('load-progress').hidden = false; $('load-progress').max = Math.max(m.bytes, 1); $('load-progress').value = 0;
      break;
    case 'progress': $('load-progress').value = m.bytes; break;
    case 'loaded': {
      state.loaded = true; state.info = m.info;
      blockSize = m.info.blockSize;
      $('block-size').value = m.info.blockSize;
      applyDefaults(m.info.defaults);
      $('length').value = Math.min(+$('length').value, Math.max(m.info.length * 4, 2));
      $('load-status').textContent = `Loaded: ${m.info.kind}, ${m.info.blocks} blocks × ${m.info.hidden} wide, vocabulary ${m.info.vocab}, context ${m.info.length}, weights ${m.info.weights}${m.info.weightsNote ? ` (${m.info.weightsNote})` : ''}${m.info.tokenizer ? '' : ' (no tokenizer: prompts and output are token ids)'}.`;
      $('load-progress').hidden = true;
      $('gen-btn').disabled = false; $('load-btn').disabled = false;
      finetuneModelLoaded(m.info);
      break;
    }
    case 'event': onEvent(m.ev, m.ms); break;
    case 'done': {
      const r = m.result;
      state.result = r; state.generating = false;
      $('gen-btn').disabled = false; $('stop-btn').disabled = true;
      for (const c of cells) if (c.state === 'fresh') c.state = 'revealed';
      render();
      $('gen-status').textContent = r.stopped ? 'Stopped.' : `Done: ${r.nfe} NFEs, ${r.calls} model calls in ${(r.ms / 1000).toFixed(2)} s (${(r.ms / Math.max(r.calls, 1)).toFixed(1)} ms per call).`;
      break;
    }
    case 'verified': state.verify = m.text; $('output').textContent = m.text; break;
    case 'error':
      state.generating = false;
      $('load-btn').disabled = false; $('gen-btn').disabled = !state.loaded; $('stop-btn').disabled = true;
      $('load-progress').hidden = true;
      $('load-status').textContent = state.loaded ? $('load-status').textContent : 'Not loaded.';
      showError(m.message);
      finetuneFailed(m.message);
      break;
  }
}

// The sampling defaults of the loaded model, from the engine (one definition with the CLI's).
function applyDefaults(d) {
  const sampler = $('sampler');
  if (sampler.options.length !== d.samplers.length) {
    sampler.textContent = '';
    for (const name of d.samplers) sampler.appendChild(new Option(name, name));
  }
  sampler.value = d.sampler;
  $('top-p').value = d.topP;
  $('steps').value = d.steps;
  $('seed').value = d.seed;
  $('tokens-per-call').value = d.tokensPerCall;
  $('confidence-threshold').value = d.confidenceThreshold;
  showSamplerInputs();
}
// Each confidence sampler's own setting is shown with it.
function showSamplerInputs() {
  $('tokens-per-call-label').hidden = $('sampler').value !== 'confidence';
  $('confidence-threshold-label').hidden = $('sampler').value !== 'confidence-threshold';
}
$('sampler').onchange = showSamplerInputs;

// ---- loading ----
$('model-choice').onchange = () => {
  const v = $('model-choice').value;
  $('model-url').hidden = v !== 'url';
  $('model-files').hidden = v !== 'files';
};
function load(source) {
  clearError();
  state.loaded = false;
  $('gen-btn').disabled = true; $('load-btn').disabled = true;
  $('load-status').textContent = 'Starting…';
  ft.source = source;
  worker.postMessage({ type: 'load', source, weights: $('weights').value });
}
$('load-btn').onclick = () => {
  const v = $('model-choice').value;
  if (v === 'default') load({ kind: 'url', base: new URL('models/default/', location.href).href });
  else if (v === 'url') {
    const base = $('model-url').value.trim();
    if (!base) return showError('Enter the URL of a folder holding config.json and model.safetensors.');
    load({ kind: 'url', base });
  } else if (v === 'files') {
    const files = [...$('model-files').files];
    if (!files.length) return showError('Choose config.json, model.safetensors and tokenizer.json.');
    load({ kind: 'files', files });
  } else {
    load({ kind: 'url', base: HF(v.slice(3)), tokenizerUrl: GPT2_TOKENIZER });
  }
};
const drop = $('drop');
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => {
  e.preventDefault(); drop.classList.remove('over');
  load({ kind: 'files', files: [...e.dataTransfer.files] });
};

// ---- generating ----
$('gen-btn').onclick = () => {
  clearError();
  const prompt = $('prompt').value.trim();
  const ids = /^[\d\s,]+$/.test(prompt) ? prompt.split(/[\s,]+/).filter(Boolean).map(Number) : null;
  const options = {
    length: +$('length').value, topP: +$('top-p').value, sampler: $('sampler').value, steps: +$('steps').value, seed: +$('seed').value,
    varLength: $('var-length').checked && !!state.info?.tokenizer,
    ...($('sampler').value === 'confidence' ? { tokensPerCall: +$('tokens-per-call').value } : {}),
    ...($('sampler').value === 'confidence-threshold' ? { confidenceThreshold: +$('confidence-threshold').value } : {}),
    ...(ids ? { promptIds: ids } : { prompt }),
  };
  state.generating = true; state.result = null; state.events = 0;
  cells = [];
  render();
  $('gen-btn').disabled = true; $('stop-btn').disabled = false;
  $('gen-status').textContent = 'Generating…';
  worker.postMessage({ type: 'generate', options });
};
$('stop-btn').onclick = () => worker.postMessage({ type: 'stop' });

// ---- self test: the fixture checks of `bd3-wgpu verify`, with the browser's own shader compiler ----
function selftestVerify() {
  const base = new URL('models/tiny-a/', location.href).href;
  const files = ['config.json', 'model.safetensors', 'train_case.safetensors', 'mask_cases.safetensors', 'sample_case.safetensors',
    'sedd/config.json', 'sedd/model.safetensors', 'sedd/sedd_case.safetensors', 'ar/config.json', 'ar/model.safetensors', 'ar/ar_case.safetensors'];
  $('load-status').textContent = 'Running the fixture checks…';
  worker.postMessage({ type: 'verify', base, files });
}

// ---- 3. Fine-tune: the training of `bd3-wgpu train --init` on the user's text, in the worker ----
// window.bd3.finetune = { running, losses: [train loss per step], valid: [[step, NELBO]], command, error, … }.
// The settings not shown are fixed here and named in the native command line, which reproduces the run.
const FT = { ema: 0.999, dropout: 0.1, valBatches: 4, outDir: 'finetuned', metrics: 'metrics.jsonl' };
const ft = { running: false, done: false, losses: [], valid: [], command: null, error: null, steps: 0, prep: null, files: null, source: null, texts: null, dataName: null };
state.finetune = ft;
// Warm-up: a tenth of the run, at most 10 steps (a short fine-tune should not spend itself warming up).
const ftWarmup = (steps) => Math.min(10, Math.floor(steps / 10));
const ftValEvery = (steps) => Math.max(1, Math.round(steps / 10));

function finetuneModelLoaded(info) {
  const f32 = info.weights === 'f32';
  $('ft-train').disabled = !info.tokenizer || !f32;
  $('ft-download').disabled = true;
  $('ft-status').textContent = !info.tokenizer ? 'This model has no tokenizer.json: it cannot be fine-tuned on text.'
    : !f32 ? `Fine-tuning needs f32 weights; this model was loaded with ${info.weights}: choose Weights f32 and load it again.` : '';
}

// The --init folder: the Hub name, or the name of the folder the model came from.
function finetuneInitName(source) {
  if (!source) return 'MODEL_DIR';
  if (source.kind === 'files') return 'MODEL_DIR';
  const hf = /huggingface\.co\/([^/]+\/[^/]+)\/resolve\//.exec(source.base);
  if (hf) return hf[1];
  return source.base.replace(/\/+$/, '').split('/').pop() || 'MODEL_DIR';
}

function finetuneCommand(s, steps) {
  const info = state.info, p = ft.prep;
  const args = ['bd3-wgpu', 'train', '--init', finetuneInitName(ft.source), '--data', ft.dataName, '--out', FT.outDir,
    '--kind', info.kind, ...(info.kind === 'bd3lm' ? ['--block-size', info.blockSize] : []),
    '--steps', steps, '--batch', s.batch, '--grad-accum', 1, '--lr', s.lr, '--warmup', s.warmup, '--seed', s.seed,
    '--ema', s.ema, '--dropout', s.dropout, '--clip-min', p.clipMin, '--clip-max', p.clipMax,
    // Without a held-out chunk the native run must not validate (it would refuse the corpus).
    '--val-every', p.validChunks > 0 ? s.valEvery : 0, '--val-batches', s.valBatches, '--metrics', FT.metrics];
  return args.map(String).join(' ');
}

function finetuneStart(run) {
  clearError();
  Object.assign(ft, { running: true, done: false, losses: [], valid: [], error: null, steps: run.settings.steps, prep: null, files: null, started: performance.now() });
  $('ft-train').disabled = true; $('ft-stop').disabled = false; $('ft-download').disabled = true; $('gen-btn').disabled = true;
  $('ft-links').textContent = '';
  $('ft-status').textContent = 'Preparing the text…';
  ft.settings = run.settings;
  drawCurve();
  worker.postMessage({ type: 'finetune', run });
}

function finetuneSettings() {
  const steps = Math.max(1, Math.floor(+$('ft-steps').value));
  return { steps, batch: Math.max(1, Math.floor(+$('ft-batch').value)), lr: +$('ft-lr').value, seed: Math.max(0, Math.floor(+$('ft-seed').value)),
    warmup: ftWarmup(steps), ema: FT.ema, dropout: FT.dropout, valEvery: ftValEvery(steps), valBatches: FT.valBatches };
}

$('ft-train').onclick = () => {
  if (!state.loaded || ft.running) return;
  const files = ft.texts;
  const text = $('ft-text').value;
  if (!files && !text.trim()) { ft.error = 'Paste some text or choose .txt files to train on.'; return showError(ft.error); }
  ft.dataName = files ? 'DATA_DIR' : 'finetune.txt';
  finetuneStart({ texts: files ? files.map((f) => f.text) : [text], settings: finetuneSettings() });
};
$('ft-stop').onclick = () => { worker.postMessage({ type: 'finetuneStop' }); $('ft-stop').disabled = true; $('ft-status').textContent = 'Stopping after this step…'; };
$('ft-download').onclick = () => { $('ft-download').disabled = true; worker.postMessage({ type: 'finetuneExport' }); };

// .txt files, chosen or dropped: read in name order, as `train --data FOLDER` reads a folder of them.
async function finetuneFiles(list) {
  const files = [...list].filter((f) => f.size > 0 || f.name.endsWith('.txt'));
  if (!files.length) return;
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  ft.texts = await Promise.all(files.map(async (f) => ({ name: f.name, text: await f.text() })));
  $('ft-text').value = '';
  $('ft-files-status').textContent = `${files.length} file(s): ${files.map((f) => f.name).join(', ')} (native: put them in DATA_DIR)`;
}
$('ft-files').onchange = () => finetuneFiles($('ft-files').files);
$('ft-text').oninput = () => { ft.texts = null; $('ft-files-status').textContent = ''; };
$('ft-text').ondragover = (e) => { e.preventDefault(); $('ft-text').classList.add('over'); };
$('ft-text').ondragleave = () => $('ft-text').classList.remove('over');
$('ft-text').ondrop = (e) => { e.preventDefault(); $('ft-text').classList.remove('over'); finetuneFiles(e.dataTransfer.files); };

function handleFinetune(m) {
  switch (m.type) {
    case 'ft-prepared': {
      const p = ft.prep = m.prep;
      ft.command = finetuneCommand(ft.settings, ft.settings.steps);
      $('ft-command').textContent = ft.command;
      $('ft-status').textContent = `${p.documents} document(s), ${p.trainChunks} training chunk(s) of ${p.length} tokens, ` +
        `${p.validChunks ? `${p.validChunks} validation chunk(s)` : 'no validation (too little held-out text)'}; ` +
        `the run needs ${fmtBytes(p.memory)} of GPU memory (${fmtBytes(p.weightsMemory)} of it the weights). Training…`;
      break;
    }
    case 'ft-step': {
      ft.losses.push(m.loss);
      const tokPerStep = ft.settings.batch * ft.prep.length;
      const rate = (m.step * tokPerStep) / Math.max(m.elapsed / 1000, 1e-9);
      const eta = ((ft.settings.steps - m.step) * tokPerStep) / rate;
      $('ft-stats').textContent = `step ${m.step}/${ft.settings.steps} · loss ${m.loss.toFixed(4)} · lr ${m.lr.toExponential(2)} · ${rate.toFixed(0)} tokens/s · ETA ${eta.toFixed(0)} s`;
      drawCurve();
      break;
    }
    case 'ft-valid':
      if (m.nelbo !== null && m.nelbo !== undefined) { ft.valid.push([m.step, m.nelbo]); drawCurve(); }
      break;
    case 'ft-done':
      ft.running = false; ft.done = true;
      drawCurve();
      // Stopped early: the native run of the steps finished.
      ft.command = finetuneCommand(ft.settings, m.steps);
      $('ft-command').textContent = ft.command;
      $('ft-train').disabled = false; $('ft-stop').disabled = true; $('ft-download').disabled = false; $('gen-btn').disabled = false;
      $('ft-status').textContent = `${m.stopped ? 'Stopped' : 'Done'} after ${m.steps} step(s): Generate now uses the fine-tuned (EMA) weights.`;
      if (selftest === 'finetune') state.finetuneSelftest = true;
      break;
    case 'ft-export': {
      const f = m.files;
      const links = $('ft-links');
      links.textContent = '';
      const blobs = { 'config.json': [f.config, 'application/json'], 'model.safetensors': [f.model, 'application/octet-stream'], 'tokenizer.json': [f.tokenizer, 'application/json'] };
      for (const [name, [data, type]] of Object.entries(blobs)) {
        const a = document.createElement('a');
        a.href = URL.createObjectURL(new Blob([data], { type }));
        a.download = name;
        a.textContent = `${name} (${fmtBytes(data.length ?? data.byteLength)})`;
        links.appendChild(a);
      }
      ft.files = Object.keys(blobs);
      $('ft-download').disabled = false;
      // One click saves the three files (the browser may ask once to allow several downloads).
      for (const a of links.querySelectorAll('a')) a.click();
      break;
    }
  }
}

function finetuneFailed(message) {
  if (!ft.running) return;
  ft.running = false; ft.error = message;
  $('ft-train').disabled = !state.loaded; $('ft-stop').disabled = true; $('gen-btn').disabled = !state.loaded;
  $('ft-status').textContent = 'Fine-tuning failed.';
}

// The loss curve: training loss per step (blue) and validation NELBO (orange dots), on one scale.
function drawCurve() {
  const c = $('ft-curve'), g = c.getContext('2d');
  const W = c.width, H = c.height, L = 46, R = 10, T = 10, B = 24;
  g.clearRect(0, 0, W, H);
  g.font = '11px system-ui, sans-serif'; g.fillStyle = '#4a5266'; g.strokeStyle = '#c3c9da';
  g.strokeRect(L, T, W - L - R, H - T - B);
  const ys = [...ft.losses, ...ft.valid.map((v) => v[1])].filter(Number.isFinite);
  if (!ys.length) { g.fillText('loss per step', L + 6, H - 8); return; }
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  // While training the axis spans the steps asked for; once done, the steps taken.
  const n = Math.max(ft.done ? ft.losses.length : ft.steps, ft.losses.length, 1);
  const x = (step) => L + ((W - L - R) * step) / n;
  const y = (v) => T + ((H - T - B) * (hi - v)) / (hi - lo);
  g.fillText(hi.toFixed(2), 4, T + 8); g.fillText(lo.toFixed(2), 4, H - B);
  g.fillText('0', L, H - 8); g.fillText(`${n} steps`, W - R - 50, H - 8);
  g.strokeStyle = '#3355cc'; g.lineWidth = 1.5; g.beginPath();
  ft.losses.forEach((v, i) => (i ? g.lineTo(x(i + 1), y(v)) : g.moveTo(x(i + 1), y(v))));
  if (ft.losses.length === 1) g.arc(x(1), y(ft.losses[0]), 2, 0, 7);
  g.stroke();
  g.fillStyle = '#e07b00';
  for (const [s, v] of ft.valid) { g.beginPath(); g.arc(x(s), y(v), 3.5, 0, 7); g.fill(); }
  // The legend sits under the plot, clear of the curve.
  g.fillStyle = '#3355cc'; g.fillText('— train loss', L + 40, H - 8);
  g.fillStyle = '#e07b00'; g.fillText('● validation NELBO (EMA weights)', L + 130, H - 8);
}
drawCurve();

// ---- self test: ?selftest=finetune&model=URL&data=URL&steps=N&seed=S&batch=B&lr=LR ----
// Loads the model folder, trains on the text at `data`, and leaves { losses, command, error } in
// window.bd3.finetune (error: the message when the run failed).
function selftestFinetune() {
  const q = new URLSearchParams(location.search);
  const model = new URL(q.get('model') || 'models/default/', location.href).href;
  const data = new URL(q.get('data'), location.href).href;
  const steps = +(q.get('steps') || 3);
  const settings = { ...finetuneSettings(), steps, warmup: ftWarmup(steps), valEvery: ftValEvery(steps),
    seed: +(q.get('seed') || 1), batch: +(q.get('batch') || 1), lr: +(q.get('lr') || 1e-4) };
  ft.dataName = data.split('/').pop();
  const start = () => {
    if (state.error) ft.error = state.error;
    else if (state.loaded) finetuneStart({ dataUrl: data, settings });
    else setTimeout(start, 100);
  };
  load({ kind: 'url', base: model });
  start();
}
