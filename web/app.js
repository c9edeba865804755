// The page: controls, the block-diffusion view, and the messages to the GPU worker (web/worker.js).
// Tests read window.bd3 (state, last result, events, the status lines) and can run the fixture checks
// with ?selftest=verify (served by `bd3-wgpu serve --extra-model tiny-a=tests/fixtures/tiny-a`), or
// crash the engine on purpose with ?selftest=panic and window.bd3.debugPanic().

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
  switch (m.type) {
    case 'ready':
      state.ready = true; state.adapter = m.adapter;
      $('adapter').textContent = `GPU: ${m.adapter}`;
      $('load-btn').disabled = !navigator.gpu;
      // Once: after a restart the checks are not re-run (a panic in them would restart forever).
      if (selftest === 'verify' && state.restarts === 0) selftestVerify();
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
      $('load-status').textContent = `Loaded: ${m.info.kind}, ${m.info.blocks} blocks × ${m.info.hidden} wide, vocabulary ${m.info.vocab}, context ${m.info.length}${m.info.tokenizer ? '' : ' (no tokenizer: prompts and output are token ids)'}.`;
      $('load-progress').hidden = true;
      $('gen-btn').disabled = false; $('load-btn').disabled = false;
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
  worker.postMessage({ type: 'load', source });
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
