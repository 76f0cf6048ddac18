'use strict';
// The official Node device SDK, npm `azure-iot-device` 1.18.4 with
// `azure-iot-device-mqtt` 1.16.4, against ferrohub over both transports:
// `Mqtt` (TLS, port 8883) and `MqttWs` (WebSocket, wss://host:443/$iothub/websocket).
//
// Each device reaches the hub only through its device connection string
// (built from the keys the service SDK `azure-iothub` returns when it creates
// the device) and trusts the hub's CA through NODE_EXTRA_CA_CERTS; both come
// from `ferrohub env`. Telemetry is read and cloud-to-device messages are
// sent with ferrohub's own CLI (FERROHUB_BIN, set by scripts/test.sh).
//
// Nothing here sleeps: every step awaits an event (a callback, a promise, a
// line of output) under a timeout.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { promisify } = require('node:util');
const { EventEmitter } = require('node:events');

const { Client: DeviceClient, Message } = require('azure-iot-device');
const { ferrohub, monitorEvents } = require('../lib/cli');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Registry, Client: ServiceClient } = require('azure-iothub');

const hubConnectionString = process.env.IOTHUB_CONNECTION_STRING;
const ferrohubBin = process.env.FERROHUB_BIN;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;

// How long any one awaited event may take.
const STEP_MS = 20000;

function hostName() {
  const m = /(?:^|;)HostName=([^;]+)/.exec(hubConnectionString || '');
  assert.ok(m, 'IOTHUB_CONNECTION_STRING has no HostName');
  return m[1];
}

// Rejects with `label` when `promise` has not settled within `ms`.
function withTimeout(promise, label, ms = STEP_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A promise resolved by the first `emitter` event `name` whose arguments
// satisfy `pred` (the listener stays until then).
function nextEvent(emitter, name, pred = () => true) {
  return new Promise((resolve) => {
    const listener = (...args) => {
      if (pred(...args)) {
        emitter.removeListener(name, listener);
        resolve(args);
      }
    };
    emitter.on(name, listener);
  });
}

function describeError(err) {
  if (!err) return String(err);
  let text = `${err.constructor && err.constructor.name}: ${err.message}`;
  if (err.transportError) text += ` (transport: ${err.transportError.message})`;
  if (err.response) text += ` (HTTP ${err.response.statusCode}, body ${JSON.stringify(err.responseBody)})`;
  return text;
}

async function ok(promise, label) {
  try {
    return await withTimeout(promise, label);
  } catch (err) {
    throw new Error(`${label} failed: ${describeError(err)}`);
  }
}

// A self-signed certificate and its key, made with openssl, plus the SHA-1
// thumbprint (hex of the DER) that the registry stores.
function selfSignedCertificate(commonName) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrohub-x509-'));
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '2',
    '-subj', `/CN=${commonName}`, '-keyout', keyFile, '-out', certFile], { stdio: 'pipe' });
  const cert = fs.readFileSync(certFile, 'utf8');
  const key = fs.readFileSync(keyFile, 'utf8');
  fs.rmSync(dir, { recursive: true, force: true });
  const thumbprint = new crypto.X509Certificate(cert).fingerprint.replace(/:/g, '');
  return { cert, key, thumbprint };
}

describe('device SDK environment', () => {
  it('has the hub connection string, the CA and the ferrohub binary', () => {
    assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    assert.ok(process.env.NODE_EXTRA_CA_CERTS, 'NODE_EXTRA_CA_CERTS is not set (run: eval "$(ferrohub env)")');
    assert.ok(ferrohubBin && fs.existsSync(ferrohubBin), `FERROHUB_BIN is not an executable: ${ferrohubBin}`);
  });
});

for (const [transportName, Transport] of [['Mqtt', Mqtt], ['MqttWs', MqttWs]]) {
  describe(`azure-iot-device over ${transportName} against ferrohub`, () => {
    const deviceId = `node-dev-${transportName.toLowerCase()}-${runId}`;
    let registry;
    let service;
    let client;
    let twin;
    // Cloud-to-device messages, re-emitted here: the client itself keeps one
    // 'message' listener for good, because removing its last one makes the
    // SDK UNSUBSCRIBE from the C2D topic.
    const inbox = new EventEmitter();

    before(async () => {
      assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set');
      registry = Registry.fromConnectionString(hubConnectionString);
      service = ServiceClient.fromConnectionString(hubConnectionString);
      const { responseBody: device } = await ok(registry.create({ deviceId }), 'Registry.create');
      const key = device.authentication.symmetricKey.primaryKey;
      const deviceConnectionString = `HostName=${hostName()};DeviceId=${deviceId};SharedAccessKey=${key}`;
      client = DeviceClient.fromConnectionString(deviceConnectionString, Transport);
      // Background errors (a failed re-subscribe, ...) are logged, and show in a failing step.
      client.on('error', (err) => console.error(`device client error: ${describeError(err)}`));
      client.on('message', (msg) => inbox.emit('message', msg));
      await ok(client.open(), `${transportName} open`);
    });

    after(async () => {
      if (client) await withTimeout(client.close(), 'client.close').catch(() => {});
      if (registry) await registry.delete(deviceId).catch(() => {});
    });

    it('gets its twin', async () => {
      twin = await ok(client.getTwin(), 'getTwin');
      assert.equal(typeof twin.properties.desired.$version, 'number', JSON.stringify(twin.properties));
      assert.equal(typeof twin.properties.reported.$version, 'number', JSON.stringify(twin.properties));
    });

    it('updates reported properties that the service SDK then reads', async () => {
      const patch = { firmware: { version: '1.2.3', state: 'current' }, runId, transport: transportName };
      await ok(new Promise((resolve, reject) => twin.properties.reported.update(patch,
        (err) => (err ? reject(err) : resolve()))), 'reported update');
      const { responseBody: serviceTwin } = await ok(registry.getTwin(deviceId), 'Registry.getTwin');
      const reported = serviceTwin.properties.reported;
      assert.deepEqual(reported.firmware, patch.firmware);
      assert.equal(reported.runId, runId);
      assert.equal(reported.transport, transportName);
      // A null deletes.
      await ok(new Promise((resolve, reject) => twin.properties.reported.update({ transport: null },
        (err) => (err ? reject(err) : resolve()))), 'reported delete');
      const { responseBody: after } = await ok(registry.getTwin(deviceId), 'Registry.getTwin');
      assert.equal(after.properties.reported.transport, undefined);
      assert.deepEqual(after.properties.reported.firmware, patch.firmware);
    });

    it('receives a desired-property patch sent with Registry.updateTwin', async () => {
      const marker = crypto.randomBytes(6).toString('hex');
      const patchSeen = nextEvent(twin, 'properties.desired',
        (delta) => delta && delta.fwTarget && delta.fwTarget.marker === marker);
      // twin.on() subscribes in the background; this waits for its SUBACK.
      await ok(promisify(twin.enableTwinDesiredPropertiesUpdates.bind(twin))(), 'desired subscription');
      const { responseBody: before } = await ok(registry.getTwin(deviceId), 'Registry.getTwin');
      await ok(registry.updateTwin(deviceId,
        { properties: { desired: { fwTarget: { marker, version: '2.0.0' } } } }, '*'), 'Registry.updateTwin');
      const [delta] = await withTimeout(patchSeen, 'desired patch on the device');
      assert.equal(delta.fwTarget.version, '2.0.0');
      assert.equal(delta.$version, before.properties.desired.$version + 1);
      assert.equal(twin.properties.desired.fwTarget.marker, marker);
    });

    it('answers a direct method invoked through the service SDK', async () => {
      const calls = [];
      client.onDeviceMethod('reboot', (request, response) => {
        calls.push(request.payload);
        response.send(201, { rebooted: true, echo: request.payload }, (err) => {
          if (err) throw err;
        });
      });
      // onDeviceMethod subscribes in the background; this waits for its SUBACK.
      await ok(promisify(client._enableMethods.bind(client))(), 'method subscription');
      const payload = { delay: 3, reason: `compat ${runId}` };
      const { result } = await ok(service.invokeDeviceMethod(deviceId, {
        methodName: 'reboot', payload, responseTimeoutInSeconds: 15, connectTimeoutInSeconds: 5,
      }), 'invokeDeviceMethod');
      assert.equal(result.status, 201);
      assert.deepEqual(result.payload, { rebooted: true, echo: payload });
      assert.deepEqual(calls, [payload]);
    });

    it('sends telemetry that `ferrohub monitor-events` prints', async () => {
      const monitor = monitorEvents(deviceId);
      try {
        await withTimeout(monitor.ready, 'monitor-events ready line');
        const marker = crypto.randomBytes(6).toString('hex');
        const message = new Message(JSON.stringify({ temperature: 21.5, marker }));
        message.messageId = `mid-${marker}`;
        message.contentType = 'application/json';
        message.contentEncoding = 'utf-8';
        message.properties.add('alert', 'high temp');
        await ok(client.sendEvent(message), 'sendEvent');
        const printed = await withTimeout(
          monitor.waitFor((v) => v.event && v.event.payload && v.event.payload.marker === marker),
          `telemetry in monitor-events output (${monitor.output()})`);
        assert.equal(printed.event.origin, deviceId);
        assert.deepEqual(printed.event.payload, { temperature: 21.5, marker });
        assert.equal(printed.event.properties.application.alert, 'high temp');
        assert.ok(JSON.stringify(printed.event.properties.system).includes(`mid-${marker}`),
          `message id not among the system properties: ${JSON.stringify(printed.event.properties.system)}`);
      } finally {
        const { code, signal } = await monitor.stop();
        assert.ok(code === 0 || signal === 'SIGINT', `monitor-events ended with ${code}/${signal}`);
      }
    });

    it('receives a cloud-to-device message sent with `ferrohub c2d-message send`', async () => {
      const marker = crypto.randomBytes(6).toString('hex');
      const received = nextEvent(inbox, 'message', (msg) => msg.data.toString().includes(marker));
      await ok(promisify(client._enableC2D.bind(client))(), 'C2D subscription');
      await ok(ferrohub(['c2d-message', 'send', '--device-id', deviceId, '--data', `hello ${marker}`,
        '--props', `color=blue;marker=${marker}`, '--message-id', `c2d-${marker}`,
        '--correlation-id', `corr-${marker}`]), 'ferrohub c2d-message send');
      const [msg] = await withTimeout(received, 'C2D message on the device');
      assert.equal(msg.data.toString(), `hello ${marker}`);
      assert.equal(msg.messageId, `c2d-${marker}`);
      assert.equal(msg.correlationId, `corr-${marker}`);
      assert.equal(msg.properties.getValue('color'), 'blue');
      assert.equal(msg.properties.getValue('marker'), marker);
      await ok(client.complete(msg), 'complete');

      // A second message, queued after the first was acknowledged, arrives too.
      const second = nextEvent(inbox, 'message', (m) => m.data.toString() === `again ${marker}`);
      await ok(ferrohub(['c2d-message', 'send', '--device-id', deviceId, '--data', `again ${marker}`]),
        'ferrohub c2d-message send (second)');
      await withTimeout(second, 'second C2D message on the device');
    });
  });
}

describe('azure-iot-device with an X.509 self-signed certificate against ferrohub', () => {
  let registry;
  const ids = [];

  before(() => {
    assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set');
    registry = Registry.fromConnectionString(hubConnectionString);
  });

  after(async () => {
    for (const id of ids) await registry.delete(id).catch(() => {});
  });

  async function x509Client(label, registeredThumbprint, credentials, Transport) {
    const deviceId = `node-x509-${label}-${runId}`;
    ids.push(deviceId);
    await ok(registry.create({
      deviceId,
      status: 'enabled',
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: registeredThumbprint } },
    }), 'Registry.create (selfSigned)');
    const client = DeviceClient.fromConnectionString(`HostName=${hostName()};DeviceId=${deviceId};x509=true`, Transport);
    await ok(client.setOptions({ cert: credentials.cert, key: credentials.key }), 'setOptions(cert, key)');
    return { client, deviceId };
  }

  // Over MqttWs the SDK presents the certificate in the TLS handshake on
  // port 443 (mqtt.js copies cert and key into the wss options).
  for (const [transportName, Transport] of [['Mqtt', Mqtt], ['MqttWs', MqttWs]]) {
    it(`connects with the registered certificate over ${transportName} and gets its twin`, async () => {
      const credentials = selfSignedCertificate(`x509-ok-${transportName}`);
      const { client } = await x509Client(`ok-${transportName.toLowerCase()}`,
        credentials.thumbprint, credentials, Transport);
      try {
        await ok(client.open(), 'open with a client certificate');
        const twin = await ok(client.getTwin(), 'getTwin');
        assert.equal(typeof twin.properties.desired.$version, 'number');
      } finally {
        await withTimeout(client.close(), 'close').catch(() => {});
      }
    });

    it(`gets UnauthorizedError over ${transportName} when the thumbprint does not match`, async () => {
      const credentials = selfSignedCertificate(`x509-bad-${transportName}`);
      const other = selfSignedCertificate('x509-registered');
      const { client } = await x509Client(`bad-${transportName.toLowerCase()}`,
        other.thumbprint, credentials, Transport);
      let caught;
      try {
        await withTimeout(client.open(), 'open with an unregistered certificate');
      } catch (err) {
        caught = err;
      } finally {
        await withTimeout(client.close(), 'close').catch(() => {});
      }
      assert.ok(caught, 'open() succeeded with a certificate whose thumbprint is not registered');
      assert.equal(caught.constructor.name, 'UnauthorizedError', describeError(caught));
    });
  }
});
