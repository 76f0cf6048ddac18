'use strict';
// Azure's tutorial "Implement a device firmware update process", end to end
// against ferrohub with the official Node SDKs: the back end
// (compat/node/tutorial/backend.js, npm `azure-iothub`) authenticates with the
// `service` policy and creates the automatic device configuration
// `firmware285`; simulated chillers (compat/node/tutorial/device.js, npm
// `azure-iot-device` + `azure-iot-device-mqtt`) install the firmware it asks
// for and report their progress; the configuration's metrics count them.
//
// Environment (exported by scripts/test.sh): IOTHUB_CONNECTION_STRING (the
// iothubowner policy: creates the devices and sets their tags, as the
// tutorial's `az iot hub` commands do), FERROHUB_SERVICE_CONNECTION_STRING
// (the `service` policy: the back end), NODE_EXTRA_CA_CERTS.
//
// scripts/test.sh sets the hub's periodic full evaluation to one hour, so
// every step here depends on the hub re-evaluating as things happen. Every
// wait polls a condition (short interval, 60 s cap); nothing sleeps and hopes.
//
// The tutorial's configuration targets every twin tagged `devicetype =
// 'chiller'` and has a fixed id, so this file must not run alongside other
// tests that tag chillers (scripts/test.sh runs the test files one at a time).
// Devices are named node-tutorial-<run>-..., and leftovers of an earlier run
// (devices with that prefix, the two configurations) are removed first.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { isDeepStrictEqual } = require('node:util');
const { Registry } = require('azure-iothub');

const backend = require('../tutorial/backend');
const { startChiller } = require('../tutorial/device');

const ownerConnectionString = process.env.IOTHUB_CONNECTION_STRING;
const serviceConnectionString = process.env.FERROHUB_SERVICE_CONNECTION_STRING;
const PREFIX = 'node-tutorial-';
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(3).toString('hex')}`;
const ids = {
  chiller1: `${PREFIX}${runId}-chiller1`,
  chiller2: `${PREFIX}${runId}-chiller2`,
  third: `${PREFIX}${runId}-third`,
  failing: `${PREFIX}${runId}-failing`,
};
const FIRMWARE_285 = backend.CONFIGURATION_ID;
const FIRMWARE_290 = 'firmware290';
const BACKEND_JS = path.join(__dirname, '..', 'tutorial', 'backend.js');
const DEVICE_JS = path.join(__dirname, '..', 'tutorial', 'device.js');

const WAIT_MS = 60000;
const STEP_MS = 50; // how long each simulated update step takes

const config285 = backend.firmwareConfiguration();
const config290 = backend.firmwareConfiguration({
  id: FIRMWARE_290,
  fwVersion: '2.9.0',
  fwPackageURI: 'https://secureuri/package290.bin',
  fwPackageCheckValue: '7890abcdef12',
  targetCondition: "tags.devicetype = 'chiller' AND tags.ring = 'early'",
  priority: 30,
});
const desired285 = config285.content.deviceContent['properties.desired.firmware'];
const desired290 = config290.content.deviceContent['properties.desired.firmware'];

const { POLL_MS, describeError, ok, waitFor: waitWithin } = require('../lib/wait');

const waitFor = (label, probe, timeoutMs = WAIT_MS) => waitWithin(label, probe, timeoutMs);

// The hub's host name, for the devices' connection strings.
function hostName() {
  const m = /(?:^|;)HostName=([^;]+)/.exec(ownerConnectionString || '');
  assert.ok(m, 'IOTHUB_CONNECTION_STRING has no HostName');
  return m[1];
}

function fwOf(twin) {
  return ((twin.properties || {}).reported || {}).firmware || {};
}

function desiredFirmware(twin) {
  const desired = (twin.properties || {}).desired || {};
  if (desired.firmware === undefined) return undefined;
  const { fwVersion, fwPackageURI, fwPackageCheckValue, ...rest } = desired.firmware;
  return { fwVersion, fwPackageURI, fwPackageCheckValue, ...rest };
}

function configurationStatus(twin, configurationId) {
  const entry = (twin.configurations || {})[configurationId];
  return entry ? entry.status : undefined;
}

// Every `$lastUpdatedBy` in desired.$metadata.firmware (the firmware node and
// its leaves).
function lastUpdatedBy(twin) {
  const meta = ((((twin.properties || {}).desired || {}).$metadata) || {}).firmware;
  const found = new Set();
  const walk = (node) => {
    if (!node || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node)) {
      if (key === '$lastUpdatedBy') found.add(value);
      else walk(value);
    }
  };
  walk(meta);
  return [...found];
}

// Runs a program to its end; resolves with {code, stdout, stderr}.
function run(args, env, timeoutMs = WAIT_MS + 30000) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (c) => { stdout += c; });
    child.stderr.on('data', (c) => { stderr += c; });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function jsonLines(text) {
  return text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

describe('the firmware update tutorial with the official SDKs', () => {
  // The steps build on one another: once one fails, the rest fail at once
  // instead of each waiting out its caps.
  let failedStep = null;
  function step(body) {
    return async (t) => {
      if (failedStep) throw new Error(`not run: the earlier step "${failedStep}" failed`);
      try {
        await body(t);
      } catch (err) {
        failedStep = t.name;
        throw err;
      }
    };
  }

  let owner; // iothubowner: devices and tags
  let service; // service policy: the back end
  const keys = {}; // device id → primary key
  const chillers = {}; // device id → startChiller handle
  let failingChild = null; // device.js --fail, run as a program
  let failingOutput = '';
  let failingExited = null;
  const metricHistory = []; // readings of the configurations' metrics, for failure reports

  function deviceConnectionString(deviceId) {
    return `HostName=${hostName()};DeviceId=${deviceId};SharedAccessKey=${keys[deviceId]}`;
  }

  async function createDevice(deviceId, tags) {
    const { responseBody: device } = await ok(owner.create({ deviceId }), `create ${deviceId}`);
    keys[deviceId] = device.authentication.symmetricKey.primaryKey;
    if (tags) await setTags(deviceId, tags);
  }

  async function setTags(deviceId, tags) {
    await ok(owner.updateTwin(deviceId, { tags }, '*'), `updateTwin ${deviceId} tags ${JSON.stringify(tags)}`);
  }

  async function twinOf(deviceId) {
    const { responseBody: twin } = await ok(owner.getTwin(deviceId), `getTwin ${deviceId}`);
    return twin;
  }

  // Waits until the device reports `fwUpdateStatus` with `currentFwVersion`.
  function waitReported(deviceId, currentFwVersion, fwUpdateStatus = 'current') {
    return waitFor(`${deviceId} to report firmware ${currentFwVersion} ${fwUpdateStatus}`, async () => {
      const twin = await twinOf(deviceId);
      const fw = fwOf(twin);
      return {
        done: fw.currentFwVersion === currentFwVersion && fw.fwUpdateStatus === fwUpdateStatus,
        state: { reported: fw, desired: desiredFirmware(twin), configurations: twin.configurations },
      };
    });
  }

  // Waits until the configuration's results are exactly these numbers (every
  // named metric present). Reads the results through the back end's own
  // polling function, as the tutorial's back end watches them.
  async function waitMetrics(configurationId, systemMetrics, metrics) {
    const matches = (actual, expected) => Object.entries(expected).every(([k, v]) => actual[k] === v);
    const { met, results } = await backend.watchMetrics(service, configurationId, {
      until: (r) => matches(r.systemMetrics, systemMetrics) && matches(r.metrics, metrics),
      timeoutMs: WAIT_MS,
      intervalMs: POLL_MS,
      onResults: (r) => metricHistory.push({ configurationId, ...r }),
    });
    assert.ok(met, `${configurationId}: expected systemMetrics ${JSON.stringify(systemMetrics)} and metrics ${
      JSON.stringify(metrics)} within ${WAIT_MS / 1000} s; last ${JSON.stringify(results)}; history ${
      JSON.stringify(metricHistory.filter((h) => h.configurationId === configurationId).slice(-10))}`);
    return results;
  }

  async function removeConfigurationIfPresent(configurationId) {
    try {
      await service.removeConfiguration(configurationId);
    } catch (err) {
      if (!(err.response && err.response.statusCode === 404)) throw err;
    }
  }

  before(async () => {
    assert.ok(ownerConnectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    assert.ok(serviceConnectionString, 'FERROHUB_SERVICE_CONNECTION_STRING is not set (scripts/test.sh exports '
      + 'it: ferrohub connection-string show --policy-name service -o tsv)');
    assert.match(serviceConnectionString, /(?:^|;)SharedAccessKeyName=service(?:;|$)/,
      'FERROHUB_SERVICE_CONNECTION_STRING is not the service policy');
    owner = Registry.fromConnectionString(ownerConnectionString);
    service = backend.registryFrom(serviceConnectionString);

    // Leftovers of an earlier run of this file.
    await ok(removeConfigurationIfPresent(FIRMWARE_290), `remove leftover ${FIRMWARE_290}`);
    await ok(removeConfigurationIfPresent(FIRMWARE_285), `remove leftover ${FIRMWARE_285}`);
    const { responseBody: devices } = await ok(owner.list(), 'list devices');
    for (const d of devices.filter((x) => x.deviceId.startsWith(PREFIX))) {
      await ok(owner.delete(d.deviceId), `delete leftover ${d.deviceId}`);
    }
    // The counts below assume this file's devices are the hub's only chillers.
    const { result: rows } = await ok(
      owner.createQuery("SELECT deviceId FROM devices WHERE tags.devicetype = 'chiller'", 100).next(),
      'query for chillers');
    assert.deepEqual(rows.map((r) => r.deviceId), [],
      'other devices on this hub are tagged chiller; the tutorial test needs a hub where it tags the only chillers');
  });

  after(async () => {
    for (const chiller of Object.values(chillers)) {
      try { await chiller.close(); } catch (_) { /* already closed or the hub is gone */ }
    }
    if (failingChild && failingChild.exitCode === null && failingChild.signalCode === null) {
      failingChild.kill('SIGINT');
      let timer;
      const stopped = await Promise.race([
        failingExited,
        new Promise((resolve) => { timer = setTimeout(() => resolve(false), 10000); }),
      ]);
      clearTimeout(timer);
      if (stopped === false) failingChild.kill('SIGKILL');
    }
    for (const id of [FIRMWARE_290, FIRMWARE_285]) {
      try { await removeConfigurationIfPresent(id); } catch (_) { /* the hub is gone */ }
    }
    for (const id of Object.values(ids)) {
      try { await owner.delete(id); } catch (_) { /* never created, or the hub is gone */ }
    }
  });

  it('two chillers and one other device run the simulated chiller and report firmware 1.0.0', step(async () => {
    await createDevice(ids.chiller1, { devicetype: 'chiller' });
    await createDevice(ids.chiller2, { devicetype: 'chiller' });
    await createDevice(ids.third, { devicetype: 'boiler' });
    for (const id of [ids.chiller1, ids.chiller2, ids.third]) {
      chillers[id] = await ok(startChiller(deviceConnectionString(id), { stepMs: STEP_MS }), `start chiller ${id}`);
    }
    for (const id of [ids.chiller1, ids.chiller2, ids.third]) {
      const state = await waitReported(id, '1.0.0');
      assert.deepEqual(state.reported.pendingFwVersion, '');
      assert.equal(state.desired, undefined, `${id} has a desired firmware before any configuration`);
    }
  }));

  it('the back end creates firmware285 with the service policy and watches it target both chillers', step(async () => {
    const result = await run(
      [BACKEND_JS, '--until', 'targetedCount=2,appliedCount=2', '--timeout', String(WAIT_MS / 1000),
        '--interval', String(POLL_MS)],
      { ...process.env, IOTHUB_CONNECTION_STRING: serviceConnectionString },
    );
    assert.equal(result.code, 0, `backend.js exited ${result.code} (${result.signal}): ${result.stderr}\n${result.stdout}`);
    assert.match(result.stderr, /created configuration firmware285/);
    const lines = jsonLines(result.stdout);
    assert.ok(lines.length >= 1, `backend.js printed no metrics: ${result.stdout}`);
    for (const line of lines) {
      assert.equal(typeof line.systemMetrics, 'object');
      assert.equal(typeof line.metrics, 'object');
    }
    const last = lines[lines.length - 1];
    assert.equal(last.systemMetrics.targetedCount, 2);
    assert.equal(last.systemMetrics.appliedCount, 2);

    // The configuration as the hub keeps it: content and queries exactly as sent.
    const { responseBody: cfg } = await ok(service.getConfiguration(FIRMWARE_285), 'getConfiguration');
    assert.equal(cfg.id, FIRMWARE_285);
    assert.equal(cfg.schemaVersion, '1.0');
    assert.deepEqual(cfg.content.deviceContent, config285.content.deviceContent);
    assert.equal(cfg.targetCondition, "tags.devicetype = 'chiller'");
    assert.equal(cfg.priority, 20);
    assert.deepEqual(cfg.metrics.queries, config285.metrics.queries);
    assert.equal(typeof cfg.etag, 'string');
    assert.ok(cfg.etag.length > 0);
    assert.ok(!Number.isNaN(Date.parse(cfg.createdTimeUtc)), `createdTimeUtc ${cfg.createdTimeUtc}`);
    assert.ok(!Number.isNaN(Date.parse(cfg.lastUpdatedTimeUtc)), `lastUpdatedTimeUtc ${cfg.lastUpdatedTimeUtc}`);
  }));

  it('both chillers install 2.8.5 and the metrics count two current and nothing else', step(async () => {
    for (const id of [ids.chiller1, ids.chiller2]) {
      await waitReported(id, '2.8.5');
      const twin = await twinOf(id);
      assert.deepEqual(desiredFirmware(twin), desired285);
      assert.equal(configurationStatus(twin, FIRMWARE_285), 'Applied');
      assert.deepEqual(lastUpdatedBy(twin), [FIRMWARE_285], `$lastUpdatedBy under desired.$metadata.firmware of ${id}`);
      // The chiller walked every step, in order.
      await chillers[id].idle();
      assert.deepEqual(chillers[id].history.slice(-5), ['downloading', 'verifying', 'applying', 'rebooting', 'current']);
    }
    await waitMetrics(FIRMWARE_285,
      { targetedCount: 2, appliedCount: 2 },
      { current: 2, applying: 0, rebooting: 0, error: 0, rolledback: 0 });
  }));

  it('the third device, not a chiller, gets no firmware', step(async () => {
    const twin = await twinOf(ids.third);
    assert.equal(desiredFirmware(twin), undefined, `desired firmware on ${ids.third}`);
    assert.equal(configurationStatus(twin, FIRMWARE_285), undefined);
    assert.equal(fwOf(twin).currentFwVersion, '1.0.0');
    assert.deepEqual(chillers[ids.third].history, ['current']);
  }));

  it('tagging the third device chiller brings it the firmware and the metrics reach 3', step(async () => {
    await setTags(ids.third, { devicetype: 'chiller' });
    await waitReported(ids.third, '2.8.5');
    const twin = await twinOf(ids.third);
    assert.deepEqual(desiredFirmware(twin), desired285);
    assert.equal(configurationStatus(twin, FIRMWARE_285), 'Applied');
    await waitMetrics(FIRMWARE_285,
      { targetedCount: 3, appliedCount: 3 },
      { current: 3, applying: 0, rebooting: 0, error: 0, rolledback: 0 });
  }));

  it('a fourth chiller whose update fails ends counted under rolledback', step(async () => {
    await createDevice(ids.failing, { devicetype: 'freezer' });
    // This one runs as the program itself: node tutorial/device.js --fail CS.
    failingChild = spawn(process.execPath,
      [DEVICE_JS, '--fail', '--step-ms', String(STEP_MS), deviceConnectionString(ids.failing)],
      { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    failingExited = new Promise((resolve) => failingChild.on('exit', () => resolve(true)));
    failingChild.stdout.on('data', (c) => { failingOutput += c; });
    failingChild.stderr.on('data', (c) => { failingOutput += c; });
    await waitFor(`${ids.failing} to connect and report firmware 1.0.0 (device.js output: see state)`, async () => {
      const fw = fwOf(await twinOf(ids.failing));
      if (failingChild.exitCode !== null) throw new Error(`device.js exited ${failingChild.exitCode}: ${failingOutput}`);
      return { done: fw.fwUpdateStatus === 'current' && fw.currentFwVersion === '1.0.0', state: { fw, failingOutput } };
    });

    await setTags(ids.failing, { devicetype: 'chiller' });
    await waitReported(ids.failing, '1.0.0', 'rolledback');
    const twin = await twinOf(ids.failing);
    assert.deepEqual(desiredFirmware(twin), desired285);
    assert.equal(configurationStatus(twin, FIRMWARE_285), 'Applied');
    const statuses = failingOutput.split('\n').filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l).fwUpdateStatus);
    assert.deepEqual(statuses.slice(-3), ['downloading', 'error', 'rolledback'], `device.js printed: ${failingOutput}`);
    await waitMetrics(FIRMWARE_285,
      { targetedCount: 4, appliedCount: 4 },
      { current: 3, applying: 0, rebooting: 0, error: 0, rolledback: 1 });
  }));

  it('a higher-priority configuration takes over the firmware of the devices it targets', step(async () => {
    await setTags(ids.chiller1, { ring: 'early' });
    const created = await ok(backend.createConfiguration(service, config290), `create ${FIRMWARE_290}`);
    assert.equal(created.id, FIRMWARE_290);
    assert.equal(created.priority, 30);

    await waitReported(ids.chiller1, '2.9.0');
    const early = await twinOf(ids.chiller1);
    assert.deepEqual(desiredFirmware(early), desired290);
    assert.equal(configurationStatus(early, FIRMWARE_290), 'Applied');
    assert.equal(configurationStatus(early, FIRMWARE_285), 'Targeted');
    assert.deepEqual(lastUpdatedBy(early), [FIRMWARE_290]);

    // The others keep firmware285's firmware.
    for (const id of [ids.chiller2, ids.third, ids.failing]) {
      const twin = await twinOf(id);
      assert.deepEqual(desiredFirmware(twin), desired285, `desired firmware of ${id}`);
      assert.equal(configurationStatus(twin, FIRMWARE_290), undefined, `${FIRMWARE_290} status on ${id}`);
    }
    assert.equal(fwOf(await twinOf(ids.chiller2)).currentFwVersion, '2.8.5');

    await waitMetrics(FIRMWARE_290,
      { targetedCount: 1, appliedCount: 1 },
      { current: 1, applying: 0, rebooting: 0, error: 0, rolledback: 0 });
    // firmware285 still targets chiller1 but no longer applies there.
    await waitMetrics(FIRMWARE_285,
      { targetedCount: 4, appliedCount: 3 },
      { current: 2, applying: 0, rebooting: 0, error: 0, rolledback: 1 });
  }));

  it('deleting the higher-priority configuration hands its devices back to firmware285', step(async () => {
    await ok(service.removeConfiguration(FIRMWARE_290), `removeConfiguration ${FIRMWARE_290}`);
    let gone;
    try {
      await service.getConfiguration(FIRMWARE_290);
    } catch (err) {
      gone = err;
    }
    assert.ok(gone && gone.response && gone.response.statusCode === 404,
      `getConfiguration after delete: ${gone ? describeError(gone) : 'it still exists'}`);

    await waitFor(`${ids.chiller1} to get firmware285's firmware back`, async () => {
      const twin = await twinOf(ids.chiller1);
      const state = {
        desired: desiredFirmware(twin),
        configurations: twin.configurations,
        lastUpdatedBy: lastUpdatedBy(twin),
      };
      return {
        done: isDeepStrictEqual(state.desired, desired285)
          && configurationStatus(twin, FIRMWARE_285) === 'Applied'
          && configurationStatus(twin, FIRMWARE_290) === undefined,
        state,
      };
    });
    const twin = await waitReported(ids.chiller1, '2.8.5');
    assert.deepEqual(twin.desired, desired285);
    assert.deepEqual(lastUpdatedBy(await twinOf(ids.chiller1)), [FIRMWARE_285]);
    await waitMetrics(FIRMWARE_285,
      { targetedCount: 4, appliedCount: 4 },
      { current: 3, applying: 0, rebooting: 0, error: 0, rolledback: 1 });
  }));
});
