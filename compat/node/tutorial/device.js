#!/usr/bin/env node
'use strict';
// The simulated chiller of Azure's tutorial "Implement a device firmware
// update process", written for ferrohub with nothing but the official device
// SDK (npm `azure-iot-device` 1.18.4 + `azure-iot-device-mqtt` 1.16.4, MQTT
// over TLS on 8883) and the device's connection string.
//
// It reads its twin, reports firmware 1.0.0 as current, and whenever the
// desired `firmware` property asks for another version it "installs" it,
// reporting every step in properties.reported.firmware.fwUpdateStatus:
// downloading → verifying → applying → rebooting → current, ending with
// currentFwVersion = the desired fwVersion. A package URI that is not https
// is refused with status `error`. A chiller told to fail reports `error`
// during the download and then `rolledback`, keeping its old version.
//
//   eval "$(ferrohub env)"       # NODE_EXTRA_CA_CERTS makes Node trust the hub
//   node device.js "$(ferrohub device-identity connection-string show --device-id MyFirmwareUpdateDevice -o tsv)"
//
// Usage: device.js [DEVICE_CONNECTION_STRING] [--fail] [--step-ms MS]
//   DEVICE_CONNECTION_STRING  default: DEVICE_CONNECTION_STRING
//   --fail                    fail every update (also CHILLER_FAIL=1)
//   --step-ms MS              time each step takes (default 100; CHILLER_STEP_MS)
// Runs until SIGINT/SIGTERM. Prints one JSON line per reported status.
//
// `startChiller(connectionString, {fail, stepMs, log})` is the same chiller as
// a function, for compat/node/test/tutorial.test.js.

const { EventEmitter } = require('node:events');
const { Client } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const INITIAL_FIRMWARE = {
  currentFwVersion: '1.0.0',
  pendingFwVersion: '',
  fwUpdateStatus: 'current',
  fwUpdateSubstatus: '',
  lastFwUpdateStartTime: '',
  lastFwUpdateEndTime: '',
};

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

function reportedUpdate(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

// A desired `firmware` value worth acting on, as a comparable key; null for
// anything else (absent, deleted, not an object).
function desiredKey(firmware) {
  if (!firmware || typeof firmware !== 'object') return null;
  return JSON.stringify([firmware.fwVersion, firmware.fwPackageURI, firmware.fwPackageCheckValue]);
}

// Connects the chiller and resolves with a handle once it has reported its
// initial state and listens for desired changes:
//   handle.deviceId, handle.client, handle.twin
//   handle.firmware            what it last reported (properties.reported.firmware)
//   handle.history             every fwUpdateStatus it reported, in order
//   handle.events              emits 'status' (firmware) after each report, 'error'
//   handle.idle()              resolves when no update is running or queued
//   handle.close()             stops listening and disconnects
async function startChiller(connectionString, options = {}) {
  const { fail = false, stepMs = 100, log = () => {} } = options;
  const deviceId = (/(?:^|;)DeviceId=([^;]+)/.exec(connectionString || '') || [])[1];
  if (!deviceId) throw new Error('not a device connection string (no DeviceId)');

  const client = Client.fromConnectionString(connectionString, Mqtt);
  const events = new EventEmitter();
  events.on('error', () => {}); // callers may listen; never crash the process
  const firmware = { ...INITIAL_FIRMWARE };
  const history = [];
  let closed = false;
  let running = null; // the promise of the update loop while it runs
  let handledKey = null; // the desired firmware last acted on

  await client.open();
  let twin;
  try {
    twin = await client.getTwin();
  } catch (err) {
    await client.close().catch(() => {});
    throw err;
  }

  async function report(patch) {
    Object.assign(firmware, patch);
    await reportedUpdate(twin, { firmware: patch });
    if (patch.fwUpdateStatus) history.push(patch.fwUpdateStatus);
    log({ deviceId, ...firmware });
    events.emit('status', { ...firmware });
  }

  // One update, from the current desired firmware; the steps are awaited
  // reported patches, with a short pause each as a real download would take.
  async function update(desired) {
    const { fwVersion, fwPackageURI } = desired;
    const now = () => new Date().toISOString();
    await report({
      pendingFwVersion: fwVersion,
      fwUpdateStatus: 'downloading',
      fwUpdateSubstatus: '',
      lastFwUpdateStartTime: now(),
      lastFwUpdateEndTime: '',
    });
    if (typeof fwPackageURI !== 'string' || !fwPackageURI.toLowerCase().startsWith('https://')) {
      await report({
        fwUpdateStatus: 'error',
        fwUpdateSubstatus: 'the package URI is not https',
        lastFwUpdateEndTime: now(),
      });
      return;
    }
    await sleep(stepMs);
    if (fail) {
      await report({ fwUpdateStatus: 'error', fwUpdateSubstatus: 'download failed' });
      await sleep(stepMs);
      await report({
        pendingFwVersion: '',
        fwUpdateStatus: 'rolledback',
        fwUpdateSubstatus: `kept ${firmware.currentFwVersion}`,
        lastFwUpdateEndTime: now(),
      });
      return;
    }
    await report({ fwUpdateStatus: 'verifying' });
    await sleep(stepMs);
    await report({ fwUpdateStatus: 'applying' });
    await sleep(stepMs);
    await report({ fwUpdateStatus: 'rebooting' });
    await sleep(stepMs);
    await report({
      currentFwVersion: fwVersion,
      pendingFwVersion: '',
      fwUpdateStatus: 'current',
      fwUpdateSubstatus: '',
      lastFwUpdateEndTime: now(),
    });
  }

  // Acts on the latest desired firmware until there is nothing new: desired
  // changes that arrive during an update are taken up after it.
  async function loop() {
    for (;;) {
      if (closed) return;
      const desired = twin.properties.desired.firmware;
      const key = desiredKey(desired);
      if (key === null || key === handledKey) return;
      handledKey = key;
      if (desired.fwVersion === firmware.currentFwVersion && firmware.fwUpdateStatus === 'current') continue;
      await update({ ...desired });
    }
  }

  function onDesiredFirmware() {
    if (running) return; // the running loop re-reads the desired state when it ends
    running = loop()
      .catch((err) => {
        if (!closed) events.emit('error', err);
      })
      .finally(() => {
        running = null;
        // A change that came in while the loop was finishing.
        if (!closed && desiredKey(twin.properties.desired.firmware) !== handledKey) onDesiredFirmware();
      });
  }

  twin.on('properties.desired.firmware', onDesiredFirmware);
  twin.on('error', (err) => events.emit('error', err));
  try {
    await report({ ...INITIAL_FIRMWARE });
    // Read the twin again now that desired updates are subscribed: a desired
    // firmware written between the first read and the subscription is seen
    // here (the SDK fires the property event for it).
    await twin.get();
  } catch (err) {
    closed = true;
    await client.close().catch(() => {});
    throw err;
  }

  return {
    deviceId,
    client,
    twin,
    firmware,
    history,
    events,
    async idle() {
      while (running) await running;
    },
    async close() {
      closed = true;
      twin.removeAllListeners('properties.desired.firmware');
      if (running) await running;
      await client.close();
    },
  };
}

function parseArgs(argv) {
  const args = {
    connectionString: process.env.DEVICE_CONNECTION_STRING,
    fail: ['1', 'true', 'yes'].includes(String(process.env.CHILLER_FAIL || '').toLowerCase()),
    stepMs: Number(process.env.CHILLER_STEP_MS || 100),
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--fail') args.fail = true;
    else if (arg === '--step-ms') {
      i += 1;
      args.stepMs = Number(argv[i]);
    } else if (arg.startsWith('-')) throw new Error(`unknown option ${arg}`);
    else args.connectionString = arg;
  }
  if (!args.connectionString) throw new Error('no device connection string: pass one or set DEVICE_CONNECTION_STRING');
  if (!Number.isFinite(args.stepMs) || args.stepMs < 0) throw new Error('bad --step-ms');
  return args;
}

async function main(argv) {
  const args = parseArgs(argv);
  const chiller = await startChiller(args.connectionString, {
    fail: args.fail,
    stepMs: args.stepMs,
    log: (state) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...state })}\n`),
  });
  chiller.events.on('error', (err) => process.stderr.write(`device: ${err.message}\n`));
  process.stderr.write(`chiller ${chiller.deviceId} connected${args.fail ? ' (set to fail updates)' : ''}\n`);
  await new Promise((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await chiller.close();
}

module.exports = { INITIAL_FIRMWARE, startChiller };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    () => { process.exitCode = 0; },
    (err) => {
      process.stderr.write(`device: ${err.message}\n`);
      process.exitCode = 1;
    },
  );
}
