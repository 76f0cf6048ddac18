'use strict';
// The ferrohub CLI as the compatibility tests drive it: one-shot commands
// and a running `monitor-events` whose printed events can be awaited. The
// binary is FERROHUB_BIN (scripts/test.sh exports it).

const { spawn } = require('node:child_process');

const ferrohubBin = process.env.FERROHUB_BIN;

// Parses a stream of concatenated (pretty-printed) JSON values, as
// `ferrohub monitor-events` prints them. Returns the complete values and the
// unparsed rest.
function splitJsonValues(text) {
  const values = [];
  let depth = 0;
  let inString = false;
  let escaped = false;
  let start = -1;
  let consumed = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === '\\') escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '{' || c === '[') {
      if (depth === 0) start = i;
      depth += 1;
    } else if (c === '}' || c === ']') {
      depth -= 1;
      if (depth === 0) {
        values.push(JSON.parse(text.slice(start, i + 1)));
        consumed = i + 1;
      }
    }
  }
  return { values, rest: text.slice(consumed) };
}

// Starts `ferrohub monitor-events` for one device. `ready` resolves when it
// says the stream is open; `waitFor(pred)` resolves with the first printed
// event matching `pred`; `stop()` ends it (SIGINT, as Ctrl-C) and resolves
// with its exit code.
function monitorEvents(deviceId, timeoutSecs = 10) {
  const child = spawn(ferrohubBin,
    ['monitor-events', '--device-id', deviceId, '--properties', 'all', '--timeout', String(timeoutSecs)],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const events = [];
  const waiters = [];
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    child.on('error', (err) => { stderr += String(err); resolve({ code: -1, signal: null }); });
  });
  const ready = new Promise((resolve, reject) => {
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
      if (stderr.includes('Starting event monitor')) resolve();
    });
    exited.then(({ code }) => reject(new Error(`monitor-events exited (${code}) before it was ready: ${stderr}`)));
  });
  child.stdout.on('data', (chunk) => {
    stdout += chunk;
    const { values, rest } = splitJsonValues(stdout);
    stdout = rest;
    for (const v of values) {
      events.push(v);
      for (const w of waiters) if (!w.done && w.pred(v)) { w.done = true; w.resolve(v); }
    }
  });
  return {
    ready,
    events,
    output: () => `stdout rest: ${stdout}\nstderr: ${stderr}`,
    waitFor(pred) {
      const hit = events.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        waiters.push({ pred, resolve, done: false });
        exited.then(({ code }) => reject(new Error(
          `monitor-events exited (${code}) without the event; printed ${JSON.stringify(events)}; ${stderr}`)));
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      return exited;
    },
  };
}

// Runs the ferrohub CLI to completion; rejects on a non-zero exit.
function ferrohub(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(ferrohubBin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => { out += c; });
    child.stderr.on('data', (c) => { err += c; });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out)
      : reject(new Error(`ferrohub ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

module.exports = { ferrohub, monitorEvents, splitJsonValues };
