'use strict';
// What the persistent-session tests share: awaiting an SDK event, a retry
// policy that never retries, and the log of the desired patches a twin got.

const { withTimeout } = require('./wait');

// Resolves with the arguments of the next `name` event of `emitter`.
function nextEvent(emitter, name) {
  return new Promise((resolve) => emitter.once(name, (...args) => resolve(args)));
}

// A retry policy that never retries: a device that was taken over must not
// reconnect by itself, or it would take the connection back.
class NeverRetry {
  shouldRetry() { return false; }

  nextRetryTimeout() { return 0; }
}

// Every desired patch the hub pushed to one twin, in order (copies: the SDK
// merges into its own objects), with a way to await the next one.
class DesiredLog {
  constructor(twin, stepMs) {
    this.stepMs = stepMs;
    this.patches = [];
    this.waiters = [];
    twin.on('properties.desired', (patch) => {
      // Adding a listener makes the SDK replay its cached desired document
      // (the twin's own object) at once: that is no push from the hub.
      if (patch === twin.properties.desired) return;
      this.patches.push(JSON.parse(JSON.stringify(patch)));
      const waiter = this.waiters.shift();
      if (waiter) waiter();
    });
  }

  // The patch at position `index` (0-based), once it has arrived.
  async at(index, label) {
    while (this.patches.length <= index) {
      await withTimeout(new Promise((resolve) => this.waiters.push(resolve)), label, this.stepMs);
    }
    return this.patches[index];
  }
}

module.exports = { nextEvent, NeverRetry, DesiredLog };
