'use strict';
// A hub restart under connected official Node SDK devices (npm
// `azure-iot-device` 1.18.4 + `azure-iot-device-mqtt` 1.16.4, CleanSession=0),
// one over `Mqtt` and one over `MqttWs`: after the hub stops and starts again
// on the same data dir, each SDK reconnects by itself and every later desired
// patch arrives exactly once, in order, with the next `$version`.
//
// The hub is the one scripts/test.sh started; only the script can restart
// it. This test asks for the restart by creating the file named in
// FERROHUB_RESTART_REQUEST and goes on once the script has created
// FERROHUB_RESTART_DONE (so it runs in a step of its own, not with test/).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { promisify } = require('node:util');

const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Registry } = require('azure-iothub');
const { describeError, withTimeout } = require('../lib/wait');
const { nextEvent, DesiredLog } = require('../lib/sessions');

const hubConnectionString = process.env.IOTHUB_CONNECTION_STRING;
const requestFile = process.env.FERROHUB_RESTART_REQUEST;
const doneFile = process.env.FERROHUB_RESTART_DONE;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;

// How long any one awaited event may take.
const STEP_MS = 20000;
// How long the restart and the SDKs' reconnects may take (the SDK backs off
// exponentially while the hub is down).
const RESTART_MS = 120000;
const PATCHES = 3;

function hostName() {
  const m = /(?:^|;)HostName=([^;]+)/.exec(hubConnectionString || '');
  assert.ok(m, 'IOTHUB_CONNECTION_STRING has no HostName');
  return m[1];
}

async function ok(promise, label, ms = STEP_MS) {
  try {
    return await withTimeout(promise, label, ms);
  } catch (err) {
    throw new Error(`${label} failed: ${describeError(err)}`);
  }
}

// Resolves once `file` exists: watched in its folder, so no polling.
function fileAppears(file) {
  return new Promise((resolve) => {
    const watcher = fs.watch(path.dirname(file), () => {
      if (fs.existsSync(file)) { watcher.close(); resolve(); }
    });
    if (fs.existsSync(file)) { watcher.close(); resolve(); }
  });
}

describe('persistent sessions of azure-iot-device across a hub restart', () => {
  let registry;
  const devices = [['Mqtt', Mqtt], ['MqttWs', MqttWs]].map(([name, Transport]) => ({
    name,
    Transport,
    deviceId: `node-restart-${name.toLowerCase()}-${runId}`,
  }));

  // Writes the next desired patch of `d` and expects it as the next push,
  // with the next $version.
  async function writeAndReceive(d) {
    d.n += 1;
    const index = d.log.patches.length;
    await ok(registry.updateTwin(d.deviceId, { properties: { desired: { n: d.n } } }, '*'), 'Registry.updateTwin');
    const patch = await d.log.at(index, `${d.name}: desired patch n=${d.n} on the device`);
    assert.equal(patch.$version, d.version + 1, `${d.name}: no gap, no repeat, in order: ${JSON.stringify(patch)}`);
    assert.equal(patch.n, d.n);
    d.version = patch.$version;
    assert.equal(d.log.patches.length, index + 1, `${d.name}: more than one push`);
  }

  before(async () => {
    assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    assert.ok(requestFile && doneFile, 'FERROHUB_RESTART_REQUEST and FERROHUB_RESTART_DONE are not set (scripts/test.sh sets them)');
    registry = Registry.fromConnectionString(hubConnectionString);
    for (const d of devices) {
      const { responseBody: device } = await ok(registry.create({ deviceId: d.deviceId }), 'Registry.create');
      const cs = `HostName=${hostName()};DeviceId=${d.deviceId};SharedAccessKey=${device.authentication.symmetricKey.primaryKey}`;
      d.client = DeviceClient.fromConnectionString(cs, d.Transport);
      d.client.on('error', (err) => console.error(`${d.name} device client error: ${describeError(err)}`));
      await ok(d.client.open(), `${d.name} open`);
      d.twin = await ok(d.client.getTwin(), `${d.name} getTwin`);
      d.log = new DesiredLog(d.twin, STEP_MS);
      await ok(promisify(d.twin.enableTwinDesiredPropertiesUpdates.bind(d.twin))(), `${d.name} desired subscription`);
      d.version = d.twin.properties.desired.$version;
      d.n = 0;
    }
  });

  after(async () => {
    for (const d of devices) {
      if (d.client) await withTimeout(d.client.close(), 'client.close', STEP_MS).catch(() => {});
      if (registry) await registry.delete(d.deviceId).catch(() => {});
    }
  });

  it('keeps every device\'s $version sequence across the restart', async () => {
    for (const d of devices) for (let i = 0; i < PATCHES; i += 1) await writeAndReceive(d);
    const reconnected = devices.map((d) => nextEvent(d.client, 'connect'));
    const restarted = fileAppears(doneFile);
    fs.writeFileSync(requestFile, `${process.pid}\n`);
    await ok(restarted, 'the hub restart (scripts/test.sh)', RESTART_MS);
    await ok(Promise.all(reconnected), 'both SDKs reconnecting by themselves', RESTART_MS);
    for (const d of devices) {
      for (let i = 0; i < PATCHES; i += 1) await writeAndReceive(d);
      // A reported round trip on the same connection, then nothing more.
      await ok(new Promise((resolve, reject) => d.twin.properties.reported.update({ seen: d.version },
        (err) => (err ? reject(err) : resolve()))), `${d.name} reported update`);
      assert.equal(d.log.patches.length, 2 * PATCHES, `${d.name}: ${JSON.stringify(d.log.patches)}`);
      const { responseBody: twin } = await ok(registry.getTwin(d.deviceId), 'Registry.getTwin');
      assert.equal(twin.properties.desired.$version, d.version);
    }
  });
});
