'use strict';
// Helpers shared by the compatibility tests: readable errors from the
// SDKs' callbacks and a capped polling wait that reports what it last saw.

const POLL_MS = 200;

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// An SDK error as one line, with the HTTP status and body when there is one.
function describeError(err) {
  if (!err) return String(err);
  let text = `${err.constructor && err.constructor.name}: ${err.message}`;
  if (err.response) text += ` (HTTP ${err.response.statusCode}, body ${JSON.stringify(err.responseBody)})`;
  return text;
}

// Awaits `promise`, naming `label` in the error if it rejects.
async function ok(promise, label) {
  try {
    return await promise;
  } catch (err) {
    throw new Error(`${label} failed: ${describeError(err)}`);
  }
}

// Rejects naming `label` when `promise` has not settled within `ms`.
function withTimeout(promise, label, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Polls `probe` until it answers {done: true}; the last state it saw goes
// into the timeout error.
async function waitFor(label, probe, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const answer = await probe();
      last = answer.state;
      if (answer.done) return answer.state;
    } catch (err) {
      last = `error: ${describeError(err)}`;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${label}; last seen: ${
        typeof last === 'string' ? last : JSON.stringify(last)}`);
    }
    await sleep(POLL_MS);
  }
}

module.exports = { POLL_MS, sleep, describeError, ok, withTimeout, waitFor };
