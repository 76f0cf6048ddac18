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
// With --download (option `download: true`) the chiller really fetches
// fwPackageURI over HTTPS, authenticated with its own SAS token
// (`Authorization: SharedAccessSignature sr=<host>%2Fdevices%2F<id>&sig=..&se=..`,
// made by the device SDK from the connection string's key, as ferrohub's own
// agent does for `GET /firmware/<sha256>`), and checks the image's SHA-256
// against fwPackageCheckValue while `verifying`. A failed download or a
// mismatch is reported as `error` (the reason in fwUpdateSubstatus) and then
// `rolledback`, keeping the old version. Trust in the hub's certificate comes
// from NODE_EXTRA_CA_CERTS. Without --download the download is only simulated.
//
//   eval "$(ferrohub env)"       # NODE_EXTRA_CA_CERTS makes Node trust the hub
//   node device.js "$(ferrohub device-identity connection-string show --device-id MyFirmwareUpdateDevice -o tsv)"
//
// Usage: device.js [DEVICE_CONNECTION_STRING] [--fail] [--download] [--step-ms MS]
//   DEVICE_CONNECTION_STRING  default: DEVICE_CONNECTION_STRING
//   --fail                    fail every update (also CHILLER_FAIL=1)
//   --download                really download and check the image (also CHILLER_DOWNLOAD=1)
//   --step-ms MS              time each step takes (default 100; CHILLER_STEP_MS)
// Runs until SIGINT/SIGTERM. Prints one JSON line per reported status.
//
// `startChiller(connectionString, {fail, download, stepMs, log})` is the same
// chiller as a function, for compat/node/test/tutorial.test.js and
// compat/node/test/rollout.test.js.

const crypto = require('node:crypto');
const { EventEmitter } = require('node:events');
const https = require('node:https');
const { Client, ConnectionString, SharedAccessSignature } = require('azure-iot-device');
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

// How long a download may take, and how large an image may be.
const DOWNLOAD_TIMEOUT_MS = 60000;
const DOWNLOAD_MAX_BYTES = 256 * 1024 * 1024;

// The device's own SAS token for the hub's HTTPS endpoints, valid an hour.
function deviceSasToken(connectionString) {
  const cs = ConnectionString.parse(connectionString);
  if (cs.SharedAccessSignature) return cs.SharedAccessSignature;
  if (!cs.SharedAccessKey) throw new Error('the connection string has no SharedAccessKey to sign a download with');
  const expiry = Math.floor(Date.now() / 1000) + 3600;
  return SharedAccessSignature.create(cs.HostName, cs.DeviceId, cs.SharedAccessKey, expiry).toString();
}

// GETs `uri` with the token; resolves with {bytes, sha256} (hex) of the body,
// rejects on anything but 200, an over-large body or the time limit. One
// redirect-free request: the hub serves its images itself.
function downloadImage(uri, token, timeoutMs = DOWNLOAD_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    let settled = false;
    let timer = null;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(value);
    };
    const req = https.get(uri, { headers: { authorization: token } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        finish(new Error(`HTTP ${res.statusCode}`));
        return;
      }
      res.on('data', (chunk) => {
        bytes += chunk.length;
        if (bytes > DOWNLOAD_MAX_BYTES) {
          req.destroy();
          finish(new Error(`the image is larger than ${DOWNLOAD_MAX_BYTES} bytes`));
          return;
        }
        hash.update(chunk);
      });
      res.on('end', () => {
        if (!res.complete) finish(new Error(`the download ended after ${bytes} bytes`));
        else finish(null, { bytes, sha256: hash.digest('hex') });
      });
      res.on('error', (err) => finish(err));
    });
    timer = setTimeout(() => {
      req.destroy();
      finish(new Error(`no complete download within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    req.on('error', (err) => finish(err));
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
//   handle.downloads           {fwVersion, fwPackageURI, bytes, sha256} per real download
//   handle.events              emits 'status' (firmware) after each report, 'error'
//   handle.idle()              resolves when no update is running or queued
//   handle.close()             stops listening and disconnects
async function startChiller(connectionString, options = {}) {
  const { fail = false, download = false, stepMs = 100, log = () => {} } = options;
  const deviceId = (/(?:^|;)DeviceId=([^;]+)/.exec(connectionString || '') || [])[1];
  if (!deviceId) throw new Error('not a device connection string (no DeviceId)');

  const client = Client.fromConnectionString(connectionString, Mqtt);
  const events = new EventEmitter();
  events.on('error', () => {}); // callers may listen; never crash the process
  const firmware = { ...INITIAL_FIRMWARE };
  const history = [];
  const downloads = []; // {fwVersion, fwPackageURI, bytes, sha256} of each real download
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

  // Reports the failed update: `error` with the reason, then `rolledback`.
  async function rollBack(reason) {
    await report({ fwUpdateStatus: 'error', fwUpdateSubstatus: reason });
    await sleep(stepMs);
    await report({
      pendingFwVersion: '',
      fwUpdateStatus: 'rolledback',
      fwUpdateSubstatus: `kept ${firmware.currentFwVersion}`,
      lastFwUpdateEndTime: new Date().toISOString(),
    });
  }

  // One update, from the current desired firmware; the steps are awaited
  // reported patches, with a short pause each as a real download would take
  // (or the real download, with `download`).
  async function update(desired) {
    const { fwVersion, fwPackageURI, fwPackageCheckValue } = desired;
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
    if (fail) {
      await sleep(stepMs);
      await rollBack('download failed');
      return;
    }
    let image = null;
    if (download) {
      try {
        image = await downloadImage(fwPackageURI, deviceSasToken(connectionString));
      } catch (err) {
        await rollBack(`download failed: ${err.message}`);
        return;
      }
      downloads.push({ fwVersion, fwPackageURI, ...image });
    } else {
      await sleep(stepMs);
    }
    await report({ fwUpdateStatus: 'verifying' });
    if (image) {
      const expected = String(fwPackageCheckValue || '').toLowerCase();
      if (image.sha256 !== expected) {
        await rollBack(`SHA-256 ${image.sha256} does not match fwPackageCheckValue ${fwPackageCheckValue}`);
        return;
      }
    }
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
    downloads,
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
    download: ['1', 'true', 'yes'].includes(String(process.env.CHILLER_DOWNLOAD || '').toLowerCase()),
    stepMs: Number(process.env.CHILLER_STEP_MS || 100),
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--fail') args.fail = true;
    else if (arg === '--download') args.download = true;
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
    download: args.download,
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

module.exports = { INITIAL_FIRMWARE, startChiller, deviceSasToken, downloadImage };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    () => { process.exitCode = 0; },
    (err) => {
      process.stderr.write(`device: ${err.message}\n`);
      process.exitCode = 1;
    },
  );
}
