'use strict';
// The official Node device SDK over HTTPS, npm `azure-iot-device` with
// `azure-iot-device-http` 1.14.4 (`Client.fromConnectionString(cs, Http)`),
// against ferrohub's device HTTPS API: sendEvent, sendEventBatch (read
// back with `ferrohub monitor-events`), and cloud-to-device messages sent
// with `ferrohub c2d-message send`, received by the transport's poller and
// completed, rejected or abandoned.
//
// The Http transport polls for C2D messages on an interval (one second by
// default); each test awaits the 'message' event under a timeout, and an
// abandoned message is awaited again with a higher delivery count.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const { EventEmitter } = require('node:events');

const { Client: DeviceClient, Message } = require('azure-iot-device');
const { Http } = require('azure-iot-device-http');
const { Registry } = require('azure-iothub');
const { ok: named, withTimeout } = require('../lib/wait');
const { ferrohub, monitorEvents } = require('../lib/cli');

const hubConnectionString = process.env.IOTHUB_CONNECTION_STRING;
const ferrohubBin = process.env.FERROHUB_BIN;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;

// How long any one awaited event may take.
const STEP_MS = 20000;

const ok = (promise, label) => withTimeout(named(promise, label), label, STEP_MS);

function hostName() {
  const m = /(?:^|;)HostName=([^;]+)/.exec(hubConnectionString || '');
  assert.ok(m, 'IOTHUB_CONNECTION_STRING has no HostName');
  return m[1];
}

describe('azure-iot-device over Http against ferrohub', () => {
  const deviceId = `node-http-${runId}`;
  let registry;
  let client;
  let monitor;
  // Messages the transport's poller delivers, re-emitted for each test.
  const inbox = new EventEmitter();

  before(async () => {
    assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    assert.ok(ferrohubBin && fs.existsSync(ferrohubBin), `FERROHUB_BIN is not an executable: ${ferrohubBin}`);
    registry = Registry.fromConnectionString(hubConnectionString);
    const { responseBody: device } = await ok(registry.create({ deviceId }), 'Registry.create');
    const key = device.authentication.symmetricKey.primaryKey;
    client = DeviceClient.fromConnectionString(
      `HostName=${hostName()};DeviceId=${deviceId};SharedAccessKey=${key}`, Http);
    client.on('error', (err) => console.error(`device client error: ${err && err.message}`));
    // The SDK's Message has no delivery count (azure-iot-http-base's
    // toMessage does not read iothub-deliverycount), so the test reads the
    // header off the same response the transport parses.
    const http = client._transport._http;
    const toMessage = http.toMessage.bind(http);
    http.toMessage = (res, body) => {
      const msg = toMessage(res, body);
      if (msg) msg.deliveryCount = Number(res.headers['iothub-deliverycount']);
      return msg;
    };
    await ok(client.open(), 'Http open');
    monitor = monitorEvents(deviceId, 60);
    await withTimeout(monitor.ready, 'monitor-events ready', STEP_MS);
  });

  after(async () => {
    if (monitor) await withTimeout(monitor.stop(), 'monitor-events stop', STEP_MS).catch(() => {});
    if (client) await withTimeout(client.close(), 'client.close', STEP_MS).catch(() => {});
    if (registry) await registry.delete(deviceId).catch(() => {});
  });

  it('sendEvent reaches the event stream with its properties', async () => {
    const marker = crypto.randomBytes(6).toString('hex');
    const message = new Message(JSON.stringify({ marker, t: 21 }));
    message.messageId = `mid-${marker}`;
    message.correlationId = `cid-${marker}`;
    message.contentType = 'application/json';
    message.contentEncoding = 'utf-8';
    message.properties.add('unit', 'C');
    await ok(client.sendEvent(message), 'sendEvent');
    const event = await withTimeout(monitor.waitFor((e) => JSON.stringify(e).includes(marker)),
      'the event at monitor-events', STEP_MS);
    const text = JSON.stringify(event);
    assert.ok(text.includes(`"mid-${marker}"`), text);
    assert.ok(text.includes(`"cid-${marker}"`), text);
    assert.ok(text.includes('"application/json"'), text);
    assert.equal(event.event.properties.application.unit, 'C', text);
  });

  it('sendEventBatch reaches the event stream message by message', async () => {
    const marker = crypto.randomBytes(6).toString('hex');
    const messages = [1, 2, 3].map((n) => {
      const m = new Message(`batch-${marker}-${n}`);
      m.properties.add('n', String(n));
      return m;
    });
    await ok(client.sendEventBatch(messages), 'sendEventBatch');
    for (const n of [1, 2, 3]) {
      const event = await withTimeout(monitor.waitFor((e) => JSON.stringify(e).includes(`batch-${marker}-${n}`)),
        `batch message ${n} at monitor-events`, STEP_MS);
      assert.equal(event.event.properties.application.n, String(n), JSON.stringify(event));
    }
  });

  describe('cloud-to-device', () => {
    before(async () => {
      // The Http transport starts polling once a 'message' listener is added.
      client.on('message', (msg) => inbox.emit('message', msg));
    });

    // Sends a C2D message with the CLI and awaits its arrival at the device.
    async function sendAndReceive(label, pred = () => true) {
      const marker = `${label}-${crypto.randomBytes(6).toString('hex')}`;
      const arrived = new Promise((resolve) => {
        const listener = (msg) => {
          if (msg.data.toString() === marker && pred(msg)) {
            inbox.removeListener('message', listener);
            resolve(msg);
          }
        };
        inbox.on('message', listener);
      });
      await ok(ferrohub(['c2d-message', 'send', '--device-id', deviceId, '--data', marker,
        '--message-id', marker, '--properties', `kind=${label}`]), 'c2d-message send');
      const msg = await withTimeout(arrived, `${label} message at the device`, STEP_MS);
      return { marker, msg };
    }

    // The next message the device polls, whatever it is (for checking
    // that a settled one does not come back).
    function nextMessage(label) {
      return withTimeout(new Promise((resolve) => inbox.once('message', resolve)), label, STEP_MS);
    }

    it('receives a message and completes it', async () => {
      const { marker, msg } = await sendAndReceive('complete');
      assert.equal(msg.messageId, marker);
      assert.ok(msg.lockToken, 'the lock token comes from the ETag');
      // The SDK keeps the header name whole as the property key.
      assert.equal(msg.properties.getValue('iothub-app-kind'), 'complete');
      await ok(client.complete(msg), 'complete');
      // Completed: completing again is refused with the lock lost.
      await assert.rejects(client.complete(msg), (err) => {
        assert.equal(err.response && err.response.statusCode, 412);
        return true;
      });
    });

    it('rejects a message, which does not come back', async () => {
      const { msg } = await sendAndReceive('reject');
      await ok(client.reject(msg), 'reject');
      // A fresh message is the next thing the poller sees, not the rejected one.
      const next = nextMessage('the message after the rejected one');
      const { marker } = await sendAndReceive('after-reject');
      const seen = await next;
      assert.equal(seen.data.toString(), marker);
      await ok(client.complete(seen), 'complete the next one');
    });

    it('abandons a message, which comes back with a higher delivery count', async () => {
      const { marker, msg } = await sendAndReceive('abandon');
      const again = new Promise((resolve) => {
        const listener = (m) => {
          if (m.data.toString() === marker) { inbox.removeListener('message', listener); resolve(m); }
        };
        inbox.on('message', listener);
      });
      await ok(client.abandon(msg), 'abandon');
      const back = await withTimeout(again, 'the abandoned message again', STEP_MS);
      assert.notEqual(back.lockToken, msg.lockToken);
      assert.ok(Number.isInteger(msg.deliveryCount), `no iothub-deliverycount: ${msg.deliveryCount}`);
      assert.equal(back.deliveryCount, msg.deliveryCount + 1);
      await ok(client.complete(back), 'complete after abandon');
    });
  });
});
