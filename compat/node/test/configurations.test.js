'use strict';
// Automatic device configurations through the official Node service SDK, npm
// `azure-iothub` 1.16.6 (Registry.addConfiguration, getConfiguration,
// getConfigurations, updateConfiguration, removeConfiguration), against
// ferrohub.
//
// What the SDK sends (node_modules/azure-iothub/dist/registry.js):
//   add:    PUT /configurations/{encodeURIComponent(id)}?api-version=2021-04-12,
//           no If-Match, body = the object given (schemaVersion set to "1.0"
//           when absent)
//   get:    GET /configurations/{id};  list: GET /configurations (no top)
//   update: PUT /configurations/{id} with If-Match: "<etag>" (quoted by the
//           SDK) or "*" when forced; body = the whole object given
//   remove: DELETE /configurations/{id}, no If-Match
// Any status below 300 is success; errors map by status only: 400
// ArgumentError, 404 a plain Error('Not found') unless the code is
// DeviceNotFound/IotHubNotFound, 409 DeviceAlreadyExistsError, 412
// InvalidEtagError.
//
// Every configuration here targets a tag no device has, so it changes no twin.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Registry } = require('azure-iothub');
const errors = require('azure-iothub/dist/common-core/errors');

const connectionString = process.env.IOTHUB_CONNECTION_STRING;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(3).toString('hex')}`;
const configId = `node-cfg-${runId}`;
const otherId = `node-cfg-${runId}-other`;
const missingId = `node-cfg-${runId}-missing`;
const tagCondition = `tags.nodecompat = '${runId}'`;

function describeError(err) {
  if (!err) return String(err);
  let text = `${err.constructor && err.constructor.name}: ${err.message}`;
  if (err.response) {
    text += ` (HTTP ${err.response.statusCode}, headers ${JSON.stringify(err.response.headers)}`;
    text += `, body ${JSON.stringify(err.responseBody)})`;
  }
  return text;
}

async function ok(promise) {
  try {
    return await promise;
  } catch (err) {
    throw new Error(`SDK call failed: ${describeError(err)}`);
  }
}

// Awaits a call that must fail with HTTP `status`, the error class Node maps
// it to, and Azure's error code in `iothub-errorcode`.
async function expectFailure(promise, { status, ErrorClass, code }) {
  let caught;
  try {
    const result = await promise;
    assert.fail(`expected HTTP ${status}, but the call succeeded with HTTP ${
      result && result.httpResponse && result.httpResponse.statusCode}`);
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    caught = err;
  }
  assert.ok(caught.response, `no HTTP response: ${describeError(caught)}`);
  assert.equal(caught.response.statusCode, status, describeError(caught));
  if (ErrorClass) {
    assert.equal(caught.constructor.name, ErrorClass.name, describeError(caught));
  }
  if (code) {
    assert.equal(caught.response.headers['iothub-errorcode'], code, describeError(caught));
    assert.match(JSON.parse(caught.responseBody).Message, new RegExp(`^ErrorCode:${code};`), describeError(caught));
  }
  return caught;
}

function newConfiguration(id) {
  return {
    id,
    labels: { purpose: 'compat', run: runId },
    content: {
      deviceContent: {
        'properties.desired.nodecompat': { mode: 'eco', setpoint: 21.5, flags: { a: true, b: null } },
        'properties.desired.nodecompatLevel': 3,
      },
    },
    targetCondition: tagCondition,
    priority: 7,
    metrics: {
      queries: {
        matching: `SELECT deviceId FROM devices WHERE ${tagCondition}`,
        eco: `SELECT deviceId FROM devices WHERE configurations.[[${id}]].status = 'Applied' AND properties.reported.mode = 'eco'`,
      },
    },
  };
}

describe('azure-iothub configurations against ferrohub', () => {
  let registry;
  let created; // the configuration answered by add
  let updated; // the configuration answered by the etag update

  before(() => {
    assert.ok(connectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    registry = Registry.fromConnectionString(connectionString);
  });

  after(async () => {
    for (const id of [configId, otherId]) {
      try {
        await registry.removeConfiguration(id);
      } catch (_) {
        // removed by the tests, never created, or the hub is gone
      }
    }
  });

  it('addConfiguration creates it and answers it with hub fields filled in', async () => {
    const sent = newConfiguration(configId);
    const { responseBody: cfg, httpResponse } = await ok(registry.addConfiguration(sent));
    assert.ok([200, 201].includes(httpResponse.statusCode), `status ${httpResponse.statusCode}`);
    assert.match(httpResponse.headers['content-type'] || '', /application\/json/);
    assert.equal(cfg.id, configId);
    assert.equal(cfg.schemaVersion, '1.0'); // the SDK fills it in
    assert.deepEqual(cfg.labels, sent.labels);
    assert.deepEqual(cfg.content.deviceContent, sent.content.deviceContent);
    assert.equal(cfg.targetCondition, tagCondition);
    assert.equal(cfg.priority, 7);
    assert.deepEqual(cfg.metrics.queries, sent.metrics.queries);
    assert.equal(typeof cfg.etag, 'string');
    assert.ok(cfg.etag.length > 0, 'etag is empty');
    for (const field of ['createdTimeUtc', 'lastUpdatedTimeUtc']) {
      assert.equal(typeof cfg[field], 'string', `${field} missing`);
      assert.ok(!Number.isNaN(Date.parse(cfg[field])), `${field} ${cfg[field]} is not a date`);
    }
    assert.equal(typeof cfg.systemMetrics, 'object');
    assert.equal(typeof cfg.systemMetrics.queries, 'object');
    created = cfg;
  });

  it('getConfiguration answers the stored configuration', async () => {
    const { responseBody: cfg, httpResponse } = await ok(registry.getConfiguration(configId));
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(cfg.id, configId);
    assert.equal(cfg.etag, created.etag);
    assert.equal(cfg.createdTimeUtc, created.createdTimeUtc);
    assert.deepEqual(cfg.content, created.content);
    assert.deepEqual(cfg.labels, created.labels);
    assert.deepEqual(cfg.metrics.queries, created.metrics.queries);
    assert.equal(cfg.priority, 7);
  });

  it('the metrics of a configuration that targets no device are all 0', async () => {
    // Computed by the engine after creation: poll, do not assume.
    const deadline = Date.now() + 60000;
    let cfg;
    for (;;) {
      ({ responseBody: cfg } = await ok(registry.getConfiguration(configId)));
      const sys = (cfg.systemMetrics && cfg.systemMetrics.results) || {};
      const custom = (cfg.metrics && cfg.metrics.results) || {};
      if (sys.targetedCount === 0 && sys.appliedCount === 0 && custom.matching === 0 && custom.eco === 0) break;
      assert.ok(Date.now() < deadline, `metrics never became 0: ${JSON.stringify([cfg.systemMetrics, cfg.metrics])}`);
      await new Promise((resolve) => { setTimeout(resolve, 200); });
    }
  });

  it('getConfigurations lists it', async () => {
    const { responseBody: list, httpResponse } = await ok(registry.getConfigurations());
    assert.equal(httpResponse.statusCode, 200);
    assert.ok(Array.isArray(list), 'getConfigurations did not answer an array');
    const mine = list.find((c) => c.id === configId);
    assert.ok(mine, `${configId} missing from ${list.map((c) => c.id).join(', ')}`);
    assert.equal(mine.etag, created.etag);
    assert.deepEqual(mine.content, created.content);
  });

  it('adding an existing id gives 409 (DeviceAlreadyExistsError) and changes nothing', async () => {
    const again = { ...newConfiguration(configId), priority: 99 };
    await expectFailure(registry.addConfiguration(again),
      { status: 409, ErrorClass: errors.DeviceAlreadyExistsError, code: 'ConfigurationAlreadyExists' });
    const { responseBody: cfg } = await ok(registry.getConfiguration(configId));
    assert.equal(cfg.priority, 7);
    assert.equal(cfg.etag, created.etag);
  });

  it('updateConfiguration with the etag changes the mutable fields (the configuration as read, sent back)', async () => {
    const { responseBody: cfg } = await ok(registry.getConfiguration(configId));
    cfg.priority = 11;
    cfg.targetCondition = `${tagCondition} AND tags.ring = 'early'`;
    cfg.labels = { purpose: 'compat', changed: 'yes' };
    cfg.metrics.queries = { matching: cfg.metrics.queries.matching };
    const { responseBody: result, httpResponse } = await ok(registry.updateConfiguration(cfg));
    assert.equal(httpResponse.statusCode, 200);
    assert.equal(result.id, configId);
    assert.equal(result.priority, 11);
    assert.equal(result.targetCondition, cfg.targetCondition);
    assert.deepEqual(result.labels, cfg.labels);
    assert.deepEqual(result.metrics.queries, cfg.metrics.queries);
    assert.deepEqual(result.content, created.content);
    assert.equal(result.createdTimeUtc, created.createdTimeUtc);
    assert.notEqual(result.etag, created.etag, 'etag did not change');
    assert.ok(Date.parse(result.lastUpdatedTimeUtc) >= Date.parse(created.lastUpdatedTimeUtc));

    const { responseBody: fetched } = await ok(registry.getConfiguration(configId));
    assert.equal(fetched.priority, 11);
    assert.equal(fetched.etag, result.etag);
    updated = result;
  });

  it('updateConfiguration with a stale etag gives 412 (InvalidEtagError) and changes nothing', async () => {
    assert.ok(updated, 'the etag update failed');
    const stale = { ...newConfiguration(configId), etag: created.etag, priority: 50 };
    await expectFailure(registry.updateConfiguration(stale), { status: 412, ErrorClass: errors.InvalidEtagError });
    const { responseBody: cfg } = await ok(registry.getConfiguration(configId));
    assert.equal(cfg.priority, 11);
    assert.equal(cfg.etag, updated.etag);
  });

  it('a forced update (If-Match "*") wins over a stale etag', async () => {
    const stale = { ...newConfiguration(configId), etag: created.etag, priority: 13 };
    const { responseBody: result } = await ok(registry.updateConfiguration(stale, true));
    assert.equal(result.priority, 13);
    assert.equal(result.targetCondition, tagCondition);
    assert.notEqual(result.etag, updated.etag);
    const { responseBody: cfg } = await ok(registry.getConfiguration(configId));
    assert.equal(cfg.priority, 13);
  });

  it('changing the content on update gives 400 (ArgumentError, CannotModifyImmutableConfigurationContent)', async () => {
    const { responseBody: before } = await ok(registry.getConfiguration(configId));
    const changed = {
      ...before,
      content: { deviceContent: { 'properties.desired.nodecompat': { mode: 'turbo' } } },
    };
    await expectFailure(registry.updateConfiguration(changed),
      { status: 400, ErrorClass: errors.ArgumentError, code: 'CannotModifyImmutableConfigurationContent' });
    await expectFailure(registry.updateConfiguration(changed, true),
      { status: 400, ErrorClass: errors.ArgumentError, code: 'CannotModifyImmutableConfigurationContent' });
    const { responseBody: after } = await ok(registry.getConfiguration(configId));
    assert.deepEqual(after.content, created.content);
    assert.equal(after.etag, before.etag);
  });

  it('invalid configurations give 400 (ArgumentError) and are not created', async () => {
    const cases = [
      ['a target condition that does not parse', { targetCondition: 'tags.nodecompat = ' },
        'InvalidConfigurationTargetCondition'],
      ['six custom metrics', {
        metrics: { queries: Object.fromEntries(['a', 'b', 'c', 'd', 'e', 'f']
          .map((k) => [k, 'SELECT deviceId FROM devices'])) },
      }, 'InvalidConfigurationCustomMetricsQuery'],
      ['a metric query that does not parse', { metrics: { queries: { bad: 'SELECT FROM WHERE' } } },
        'InvalidConfigurationCustomMetricsQuery'],
      ['a content path outside properties.desired', { content: { deviceContent: { 'tags.x': 1 } } },
        'InvalidConfigurationContent'],
      ['IoT Edge modulesContent', {
        content: { modulesContent: { $edgeAgent: { 'properties.desired': { schemaVersion: '1.1' } } } },
      }, 'InvalidConfigurationContent'],
    ];
    for (const [label, override, code] of cases) {
      const cfg = { ...newConfiguration(otherId), ...override };
      const err = await expectFailure(registry.addConfiguration(cfg), { status: 400, ErrorClass: errors.ArgumentError });
      assert.equal(err.response.headers['iothub-errorcode'], code, `${label}: ${describeError(err)}`);
      await expectFailure(registry.getConfiguration(otherId), { status: 404 });
    }
  });

  it('an unknown id gives 404 to get, update and remove', async () => {
    const err = await expectFailure(registry.getConfiguration(missingId), { status: 404, code: 'ConfigurationNotFound' });
    assert.equal(err.message, 'Not found'); // Node's generic 404 error for codes other than DeviceNotFound
    await expectFailure(registry.updateConfiguration({ ...newConfiguration(missingId), etag: created.etag }),
      { status: 404, code: 'ConfigurationNotFound' });
    await expectFailure(registry.removeConfiguration(missingId), { status: 404, code: 'ConfigurationNotFound' });
  });

  it('removeConfiguration answers 204 and the configuration is gone', async () => {
    const { httpResponse } = await ok(registry.removeConfiguration(configId));
    assert.equal(httpResponse.statusCode, 204);
    await expectFailure(registry.getConfiguration(configId), { status: 404, code: 'ConfigurationNotFound' });
    const { responseBody: list } = await ok(registry.getConfigurations());
    assert.ok(!list.some((c) => c.id === configId), 'removed configuration still listed');
  });
});
