'use strict';
// Persistent sessions with the official Node device SDK (npm
// `azure-iot-device` 1.18.4 + `azure-iot-device-mqtt` 1.16.4, which connect
// with CleanSession=0), over `Mqtt` (TLS) and `MqttWs` (WebSockets): a device
// that received desired patches (1) closes and reconnects, (2) has its TCP
// connection dropped and reconnects by itself, (3) is taken over by a second
// connection while the first is live — and after each, every further desired
// patch sent with the service SDK `azure-iothub` must arrive exactly once, in
// order, with the next `$version`.
//
// The Node SDK hands every patch it receives to 'properties.desired'
// listeners as it came (no de-duplication), so this sees what the hub pushed.
//
// A hub restart is compat/node/restart/sessions_restart.test.js: these
// suites share one hub that only scripts/test.sh can restart, so that file
// runs in a step of its own. The Rust test crates/ferrohub/tests/sessions.rs
// covers the same four interruptions over both transports.
//
// Nothing sleeps: every step awaits an SDK callback or event under a
// deadline that fails the test.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { promisify } = require('node:util');

const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Registry } = require('azure-iothub');
const { describeError, withTimeout } = require('../lib/wait');
const { nextEvent, NeverRetry, DesiredLog } = require('../lib/sessions');

const hubConnectionString = process.env.IOTHUB_CONNECTION_STRING;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;

// How long any one awaited event may take.
const STEP_MS = 20000;
// Desired patches written after each interruption.
const PATCHES = 3;

function hostName() {
  const m = /(?:^|;)HostName=([^;]+)/.exec(hubConnectionString || '');
  assert.ok(m, 'IOTHUB_CONNECTION_STRING has no HostName');
  return m[1];
}

async function ok(promise, label) {
  try {
    return await withTimeout(promise, label, STEP_MS);
  } catch (err) {
    throw new Error(`${label} failed: ${describeError(err)}`);
  }
}

for (const [transportName, Transport] of [['Mqtt', Mqtt], ['MqttWs', MqttWs]]) {
  describe(`persistent sessions of azure-iot-device over ${transportName} against ferrohub`, () => {
    const deviceId = `node-session-${transportName.toLowerCase()}-${runId}`;
    let registry;
    let deviceConnectionString;
    // The connection in use: its client, twin and log of desired patches.
    let current;
    // Clients to close at the end.
    const clients = [];
    // The last desired $version the device saw, and the value last written.
    let version;
    let n = 0;

    // Opens a client and subscribes to desired patches. Returns the CONNACK's
    // session-present flag, which the SDK hands back from open() (its result
    // wraps the transport's, which wraps the CONNACK).
    async function connect({ retry = true } = {}) {
      const client = DeviceClient.fromConnectionString(deviceConnectionString, Transport);
      clients.push(client);
      if (!retry) client.setRetryPolicy(new NeverRetry());
      client.on('error', (err) => console.error(`device client error: ${describeError(err)}`));
      const opened = await ok(client.open(), `${transportName} open`);
      const connack = opened && opened.transportObj && opened.transportObj.transportObj;
      assert.equal(typeof (connack && connack.sessionPresent), 'boolean',
        `no CONNACK in the result of open(): ${JSON.stringify(opened)}`);
      const twin = await ok(client.getTwin(), 'getTwin');
      const log = new DesiredLog(twin, STEP_MS);
      // The first listener subscribes in the background; this waits for its SUBACK.
      await ok(promisify(twin.enableTwinDesiredPropertiesUpdates.bind(twin))(), 'desired subscription');
      return { client, twin, log, sessionPresent: connack.sessionPresent };
    }

    // Writes the next desired patch and expects it at the device as the
    // next patch in the log, with the next $version.
    async function writeAndReceive(conn) {
      n += 1;
      const index = conn.log.patches.length;
      await ok(registry.updateTwin(deviceId, { properties: { desired: { n } } }, '*'), 'Registry.updateTwin');
      const patch = await conn.log.at(index, `desired patch n=${n} on the device`);
      assert.equal(patch.$version, version + 1, `no gap, no repeat, in order: ${JSON.stringify(patch)}`);
      assert.equal(patch.n, n, JSON.stringify(patch));
      version = patch.$version;
      assert.equal(conn.log.patches.length, index + 1, `more than one push: ${JSON.stringify(conn.log.patches)}`);
    }

    // After a reported-patch round trip on the same connection (the hub
    // answers in order), no late duplicate may be waiting, and the service
    // sees the version the device saw.
    async function expectNothingMore(conn, count) {
      await ok(new Promise((resolve, reject) => conn.twin.properties.reported.update({ seen: version },
        (err) => (err ? reject(err) : resolve()))), 'reported update');
      assert.equal(conn.log.patches.length, count, JSON.stringify(conn.log.patches));
      const { responseBody: twin } = await ok(registry.getTwin(deviceId), 'Registry.getTwin');
      assert.equal(twin.properties.desired.$version, version);
    }

    before(async () => {
      assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
      assert.ok(process.env.NODE_EXTRA_CA_CERTS, 'NODE_EXTRA_CA_CERTS is not set (run: eval "$(ferrohub env)")');
      registry = Registry.fromConnectionString(hubConnectionString);
      const { responseBody: device } = await ok(registry.create({ deviceId }), 'Registry.create');
      const key = device.authentication.symmetricKey.primaryKey;
      deviceConnectionString = `HostName=${hostName()};DeviceId=${deviceId};SharedAccessKey=${key}`;
    });

    after(async () => {
      for (const client of clients) await withTimeout(client.close(), 'client.close', STEP_MS).catch(() => {});
      if (registry) await registry.delete(deviceId).catch(() => {});
    });

    it('receives desired patches, each $version once and in order', async () => {
      current = await connect();
      assert.equal(current.sessionPresent, false, 'a new device has no stored session');
      version = current.twin.properties.desired.$version;
      for (let i = 0; i < PATCHES; i += 1) await writeAndReceive(current);
    });

    it('closes and reconnects: the session is present and later patches continue the $version sequence',
      async () => {
        await ok(current.client.close(), 'close');
        current = await connect();
        assert.equal(current.sessionPresent, true, 'the hub dropped the session');
        assert.equal(current.twin.properties.desired.$version, version, 'nothing was written meanwhile');
        assert.equal(current.twin.properties.desired.n, n);
        for (let i = 0; i < PATCHES; i += 1) await writeAndReceive(current);
        await expectNothingMore(current, PATCHES);
      });

    it('has its TCP connection dropped: it reconnects by itself and later patches continue the sequence',
      async () => {
        const count = current.log.patches.length;
        const reconnected = nextEvent(current.client, 'connect');
        // The socket under the SDK's MQTT client, destroyed without a
        // DISCONNECT, as a lost link would end it (SDK internals, pinned).
        const stream = current.client._transport._mqtt._mqttClient.stream;
        assert.ok(stream && typeof stream.destroy === 'function', 'no socket under the SDK\'s MQTT client');
        stream.destroy();
        await withTimeout(reconnected, 'the SDK to reconnect', STEP_MS);
        for (let i = 0; i < PATCHES; i += 1) await writeAndReceive(current);
        await expectNothingMore(current, count + PATCHES);
      });

    it('is taken over by a second connection: the first is closed and the second gets every later patch',
      async () => {
        // Started again so that it will not come back after the takeover.
        await ok(current.client.close(), 'close');
        const first = await connect({ retry: false });
        assert.equal(first.sessionPresent, true, 'the hub dropped the session');
        await writeAndReceive(first);
        const firstClosed = nextEvent(first.client, 'disconnect');
        const second = await connect();
        assert.equal(second.sessionPresent, true, 'the hub dropped the session');
        await withTimeout(firstClosed, 'the hub to close the first connection', STEP_MS);
        assert.equal(second.twin.properties.desired.$version, version);
        current = second;
        for (let i = 0; i < PATCHES; i += 1) await writeAndReceive(current);
        await expectNothingMore(current, PATCHES);
        assert.equal(first.log.patches.length, 1, `the replaced connection got ${JSON.stringify(first.log.patches)}`);
      });
  });
}
