'use strict';
// The official Node service SDK, npm `azure-iothub` 1.16.6, against ferrohub.
//
// The hub is reached only through IOTHUB_CONNECTION_STRING and trusted through
// NODE_EXTRA_CA_CERTS, both exported by `ferrohub env`. The SDK dials port 443
// of the connection string's HostName; it has no port setting.
//
// Tests in the describe() block run in order and share the device they create.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Registry } = require('azure-iothub');
// azure-iothub vendors azure-iot-common's errors; these are the classes that
// RestApiClient.translateError throws.
const errors = require('azure-iothub/dist/common-core/errors');

const connectionString = process.env.IOTHUB_CONNECTION_STRING;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;
const deviceId = `node-compat-${runId}`;
// Every special character Azure allows in a device id. encodeURIComponent
// leaves - _ . ! ~ * ' ( ) as they are and percent-encodes the rest.
const specialId = `node-compat-${runId}-%_.*?!(),:=@$'-x`;
const missingId = `node-compat-${runId}-missing`;

function randomKey() {
  return crypto.randomBytes(32).toString('base64');
}

// One line with what the SDK saw: error class, message, status, headers, body.
function describeError(err) {
  if (!err) return String(err);
  let text = `${err.constructor && err.constructor.name}: ${err.message}`;
  if (err.response) {
    text += ` (HTTP ${err.response.statusCode}, headers ${JSON.stringify(err.response.headers)}`;
    text += `, body ${JSON.stringify(err.responseBody)})`;
  }
  return text;
}

// Awaits an SDK call that must succeed; a failure is rethrown with the HTTP details.
async function ok(promise) {
  try {
    return await promise;
  } catch (err) {
    throw new Error(`SDK call failed: ${describeError(err)}`);
  }
}

// Awaits an SDK call that must fail with the given typed error.
async function expectTypedError(promise, ErrorClass) {
  let caught;
  try {
    const result = await promise;
    assert.fail(`expected ${ErrorClass.name}, but the call succeeded with HTTP ${
      result && result.httpResponse && result.httpResponse.statusCode}`);
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    caught = err;
  }
  assert.equal(caught.constructor.name, ErrorClass.name,
    `expected ${ErrorClass.name}, got ${describeError(caught)}`);
  assert.ok(caught instanceof ErrorClass, `not an instance of ${ErrorClass.name}: ${describeError(caught)}`);
  return caught;
}

function assertBase64Key(key, label) {
  assert.equal(typeof key, 'string', `${label} is not a string`);
  assert.ok(key.length > 0, `${label} is empty`);
  assert.ok(Buffer.from(key, 'base64').length >= 16, `${label} is not a base64 key: ${key}`);
}

describe('azure-iothub Registry against ferrohub', () => {
  let registry;
  let created;       // the Device answered by create
  let updated;       // the Device answered by update
  let staleTwinEtag; // a twin etag that a later write has replaced

  before(() => {
    assert.ok(connectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    registry = Registry.fromConnectionString(connectionString);
  });

  after(async () => {
    for (const id of [deviceId, specialId]) {
      try {
        await registry.delete(id);
      } catch (_) {
        // already deleted by the tests, or the hub is gone
      }
    }
  });

  it('create answers 200 with generated SAS keys', async () => {
    const { responseBody: device, httpResponse } = await ok(registry.create({ deviceId }));
    assert.equal(httpResponse.statusCode, 200);
    assert.match(httpResponse.headers['content-type'] || '', /application\/json/);
    assert.equal(device.deviceId, deviceId);
    assert.equal(typeof device.generationId, 'string');
    assert.ok(device.generationId.length > 0, 'generationId is empty');
    assert.equal(typeof device.etag, 'string');
    assert.ok(device.etag.length > 0, 'etag is empty');
    assert.equal(device.status, 'enabled');
    assert.equal(device.connectionState, 'Disconnected');
    assert.equal(Number(device.cloudToDeviceMessageCount), 0);
    assert.equal(device.authentication.type, 'sas');
    assertBase64Key(device.authentication.symmetricKey.primaryKey, 'primaryKey');
    assertBase64Key(device.authentication.symmetricKey.secondaryKey, 'secondaryKey');
    assert.notEqual(device.authentication.symmetricKey.primaryKey,
      device.authentication.symmetricKey.secondaryKey);
    created = device;
  });

  it('creating an existing device gives DeviceAlreadyExistsError', async () => {
    const err = await expectTypedError(registry.create({ deviceId }), errors.DeviceAlreadyExistsError);
    assert.equal(err.response.statusCode, 409);
  });

  it('get returns the created device', async () => {
    const { responseBody: device, httpResponse } = await ok(registry.get(deviceId));
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(device.deviceId, deviceId);
    assert.equal(device.generationId, created.generationId);
    assert.equal(device.etag, created.etag);
    assert.equal(device.status, 'enabled');
    assert.deepEqual(device.authentication.symmetricKey, created.authentication.symmetricKey);
  });

  it('list includes the device', async () => {
    const { responseBody: devices, httpResponse } = await ok(registry.list());
    assert.equal(httpResponse.statusCode, 200);
    assert.ok(Array.isArray(devices), 'list did not answer an array');
    const mine = devices.find((d) => d.deviceId === deviceId);
    assert.ok(mine, `${deviceId} missing from list of ${devices.length}`);
    assert.equal(mine.etag, created.etag);
    for (const d of devices) assert.equal(typeof d.deviceId, 'string');
  });

  it('update disables the device (the SDK sends If-Match "*", etag in the body)', async () => {
    const { responseBody: current } = await ok(registry.get(deviceId));
    const changed = { ...current, status: 'disabled', statusReason: 'compat test' };
    const { responseBody: device, httpResponse } = await ok(registry.update(changed));
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(device.deviceId, deviceId);
    assert.equal(device.status, 'disabled');
    assert.equal(device.statusReason, 'compat test');
    assert.equal(device.generationId, created.generationId);
    assert.notEqual(device.etag, current.etag, 'etag did not change on update');
    assert.deepEqual(device.authentication.symmetricKey, created.authentication.symmetricKey);
    const { responseBody: again } = await ok(registry.get(deviceId));
    assert.equal(again.status, 'disabled');
    assert.equal(again.etag, device.etag);
    updated = device;
  });

  it('a device id with every special character Azure allows round-trips', async () => {
    const primaryKey = randomKey();
    const secondaryKey = randomKey();
    const { responseBody: device } = await ok(registry.create({
      deviceId: specialId,
      status: 'disabled',
      authentication: { symmetricKey: { primaryKey, secondaryKey } },
    }));
    assert.equal(device.deviceId, specialId);
    assert.equal(device.status, 'disabled');
    assert.equal(device.authentication.symmetricKey.primaryKey, primaryKey);
    assert.equal(device.authentication.symmetricKey.secondaryKey, secondaryKey);
    const { responseBody: fetched } = await ok(registry.get(specialId));
    assert.equal(fetched.deviceId, specialId);
    const { responseBody: twin } = await ok(registry.getTwin(specialId));
    assert.equal(twin.deviceId, specialId);
    const { httpResponse } = await ok(registry.delete(specialId));
    assert.equal(httpResponse.statusCode, 204);
    await expectTypedError(registry.get(specialId), errors.DeviceNotFoundError);
  });

  it('getTwin returns the twin with the identity fields', async () => {
    const { responseBody: twin, httpResponse } = await ok(registry.getTwin(deviceId));
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(twin.deviceId, deviceId);
    assert.equal(typeof twin.etag, 'string');
    assert.ok(twin.etag.length > 0 && twin.etag !== '*', `bad twin etag ${twin.etag}`);
    assert.equal(typeof twin.version, 'number');
    assert.equal(twin.deviceEtag, updated.etag, 'deviceEtag is not the identity etag');
    assert.equal(twin.status, 'disabled');
    assert.deepEqual(twin.tags, {});
    assert.equal(typeof twin.properties.desired.$version, 'number');
    assert.equal(typeof twin.properties.reported.$version, 'number');
  });

  it('updateTwin with the twin etag merges tags and desired and bumps $version', async () => {
    const { responseBody: before } = await ok(registry.getTwin(deviceId));
    const patch = {
      tags: { devicetype: 'chiller', location: { building: 43, floor: 1 } },
      properties: { desired: { telemetryInterval: 30, firmware: { version: '1.0.0', url: 'https://example.invalid/fw' } } },
    };
    const { responseBody: twin, httpResponse } = await ok(registry.updateTwin(deviceId, patch, before.etag));
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(twin.deviceId, deviceId);
    assert.deepEqual(twin.tags, patch.tags);
    const desired = twin.properties.desired;
    assert.equal(desired.telemetryInterval, 30);
    assert.deepEqual({ version: desired.firmware.version, url: desired.firmware.url }, patch.properties.desired.firmware);
    assert.equal(desired.$version, before.properties.desired.$version + 1);
    assert.ok(twin.version > before.version, `twin version ${twin.version} not above ${before.version}`);
    assert.notEqual(twin.etag, before.etag, 'twin etag did not change');
    assert.equal(typeof desired.$metadata.$lastUpdated, 'string');
    assert.equal(desired.$metadata.telemetryInterval.$lastUpdatedVersion, desired.$version);
    staleTwinEtag = before.etag;

    const { responseBody: fetched } = await ok(registry.getTwin(deviceId));
    assert.deepEqual(fetched.tags, patch.tags);
    assert.equal(fetched.properties.desired.$version, desired.$version);
    assert.equal(fetched.etag, twin.etag);
  });

  it('a second patch merges recursively and null deletes', async () => {
    const { responseBody: before } = await ok(registry.getTwin(deviceId));
    const patch = {
      tags: { location: { floor: 2 } },
      properties: { desired: { telemetryInterval: null, firmware: { url: null } } },
    };
    const { responseBody: twin } = await ok(registry.updateTwin(deviceId, patch, before.etag));
    assert.deepEqual(twin.tags, { devicetype: 'chiller', location: { building: 43, floor: 2 } });
    const desired = twin.properties.desired;
    assert.ok(!('telemetryInterval' in desired), 'telemetryInterval was not deleted');
    assert.equal(desired.firmware.version, '1.0.0');
    assert.ok(!('url' in desired.firmware), 'firmware.url was not deleted');
    assert.equal(desired.$version, before.properties.desired.$version + 1);
  });

  it('updateTwin with a stale etag gives InvalidEtagError and changes nothing', async () => {
    assert.ok(staleTwinEtag, 'no stale etag: the earlier updateTwin test failed');
    const { responseBody: before } = await ok(registry.getTwin(deviceId));
    const err = await expectTypedError(
      registry.updateTwin(deviceId, { tags: { stale: true } }, staleTwinEtag),
      errors.InvalidEtagError);
    assert.equal(err.response.statusCode, 412);
    const { responseBody: after } = await ok(registry.getTwin(deviceId));
    assert.ok(!('stale' in after.tags), 'a rejected patch was stored');
    assert.equal(after.etag, before.etag);
    assert.equal(after.properties.desired.$version, before.properties.desired.$version);
  });

  it('get of a missing device gives DeviceNotFoundError', async () => {
    const err = await expectTypedError(registry.get(missingId), errors.DeviceNotFoundError);
    assert.equal(err.response.statusCode, 404);
  });

  it('getTwin of a missing device gives DeviceNotFoundError', async () => {
    await expectTypedError(registry.getTwin(missingId), errors.DeviceNotFoundError);
  });

  it('delete of a missing device gives DeviceNotFoundError', async () => {
    await expectTypedError(registry.delete(missingId), errors.DeviceNotFoundError);
  });

  it('a wrong shared access key gives UnauthorizedError', async () => {
    const forged = connectionString.replace(/SharedAccessKey=[^;]*/, `SharedAccessKey=${randomKey()}`);
    assert.notEqual(forged, connectionString);
    const err = await expectTypedError(Registry.fromConnectionString(forged).get(deviceId),
      errors.UnauthorizedError);
    assert.equal(err.response.statusCode, 401);
  });

  it('delete answers 204 and removes the device', async () => {
    const { httpResponse } = await ok(registry.delete(deviceId));
    assert.equal(httpResponse.statusCode, 204);
    await expectTypedError(registry.get(deviceId), errors.DeviceNotFoundError);
    const { responseBody: devices } = await ok(registry.list());
    assert.ok(!devices.some((d) => d.deviceId === deviceId), 'deleted device still listed');
  });
});
