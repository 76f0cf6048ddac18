'use strict';
// One staged rollout across two kinds of device: the official-SDK device
// program alongside ferrohub's own Rust update agent.
//
//   device A  the tutorial chiller (compat/node/tutorial/device.js, npm
//             `azure-iot-device` + `azure-iot-device-mqtt`, MQTT/TLS), with
//             `download: true`: it fetches fwPackageURI over HTTPS with its own
//             SAS token and checks the image's SHA-256 against
//             fwPackageCheckValue before it applies anything;
//   device B  `ferrohub agent` as a child process (slots in a temporary state
//             directory, the signed manifest checked with the hub's public key).
//
// Both are registered with the service SDK (`azure-iothub` Registry) and
// tagged with a device type unique to this run, so the rollout targets these
// two devices and nothing else on the shared hub. The image is uploaded and
// the rollout created, watched and shown with ferrohub's CLI (FERROHUB_BIN);
// the twins are read back with the service SDK.
//
// Environment (exported by scripts/test.sh from `ferrohub env`):
// IOTHUB_CONNECTION_STRING, NODE_EXTRA_CA_CERTS, FERROHUB_CA,
// FERROHUB_HTTPS_PORT, FERROHUB_MQTT_PORT, FERROHUB_BIN.
//
// Every wait polls a condition or awaits a process under a cap; nothing
// sleeps and hopes.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { Registry } = require('azure-iothub');

const { startChiller, downloadImage, deviceSasToken } = require('../tutorial/device');

const hubConnectionString = process.env.IOTHUB_CONNECTION_STRING;
const ferrohubBin = process.env.FERROHUB_BIN;
const runId = `${Date.now().toString(36)}-${crypto.randomBytes(3).toString('hex')}`;
const PREFIX = 'node-rollout-';
const DEVICE_TYPE = `${PREFIX}${runId}`;
const ids = {
  sdk: `${PREFIX}${runId}-sdk`,
  agent: `${PREFIX}${runId}-agent`,
};
// A third chiller outside the rollout (another device type), handed a bad
// image by hand: the download check must refuse it.
const OTHER_ID = `${PREFIX}${runId}-other`;
const VERSION = `3.1.0-node.${runId}`;
const ROLLOUT_ID = `node-rollout-${runId}`.replace(/[^a-z0-9_-]/g, '-');
const IMAGE_BYTES = 256 * 1024;

const WAIT_MS = 60000; // any one polled condition
const WATCH_MS = 120000; // `firmware rollout watch` from creation to success
const CLI_MS = 30000; // any other CLI command
const STEP_MS = 50; // the chiller's pause per simulated step

const { ok, waitFor: waitWithin } = require('../lib/wait');

const waitFor = (label, probe, timeoutMs = WAIT_MS) => waitWithin(label, probe, timeoutMs);

// Runs the ferrohub CLI to its end (killed at the cap); resolves with
// {code, signal, stdout, stderr, ms}.
function cli(args, timeoutMs = CLI_MS) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(ferrohubBin, args, { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, timeoutMs);
    child.stdout.on('data', (c) => { stdout += c; });
    child.stderr.on('data', (c) => { stderr += c; });
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut, ms: Date.now() - started });
    });
  });
}

// Runs the CLI and parses its JSON output; throws with the output otherwise.
async function cliJson(args, timeoutMs = CLI_MS) {
  const r = await cli(args, timeoutMs);
  const shown = `ferrohub ${args.join(' ')}: exit ${r.code}${r.timedOut ? ' (killed at the cap)' : ''}\n`
    + `stdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.code, 0, shown);
  try {
    return JSON.parse(r.stdout);
  } catch (err) {
    throw new Error(`${shown}\nnot JSON: ${err.message}`);
  }
}

function hostName() {
  const m = /(?:^|;)HostName=([^;]+)/.exec(hubConnectionString || '');
  assert.ok(m, 'IOTHUB_CONNECTION_STRING has no HostName');
  return m[1];
}

function fwOf(twin) {
  return ((twin.properties || {}).reported || {}).firmware || {};
}

describe('a staged rollout to the official-SDK chiller and the Rust agent together', () => {
  // The steps build on one another: once one fails, the rest fail at once.
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

  let registry;
  let tmpDir;
  const keys = {}; // device id → primary key
  let chiller = null; // startChiller handle of device A
  let other = null; // startChiller handle of OTHER_ID
  let agent = null; // the `ferrohub agent` child of device B
  let agentExited = null; // resolves with {code, signal} when it exits
  let agentOutput = '';
  let image = null; // the upload's JSON record
  let rolloutCreated = false;

  function deviceConnectionString(deviceId) {
    return `HostName=${hostName()};DeviceId=${deviceId};SharedAccessKey=${keys[deviceId]}`;
  }

  async function twinOf(deviceId) {
    const { responseBody: twin } = await ok(registry.getTwin(deviceId), `getTwin ${deviceId}`);
    return twin;
  }

  function waitReported(deviceId, currentFwVersion, fwUpdateStatus = 'current', extra = () => ({})) {
    return waitFor(`${deviceId} to report firmware ${currentFwVersion} ${fwUpdateStatus}`, async () => {
      const fw = fwOf(await twinOf(deviceId));
      return {
        done: fw.currentFwVersion === currentFwVersion && fw.fwUpdateStatus === fwUpdateStatus,
        state: { reported: fw, ...extra() },
      };
    });
  }

  function agentTail() {
    return agentOutput.split('\n').slice(-40).join('\n');
  }

  before(async () => {
    assert.ok(hubConnectionString, 'IOTHUB_CONNECTION_STRING is not set (run: eval "$(ferrohub env)")');
    assert.ok(process.env.NODE_EXTRA_CA_CERTS, 'NODE_EXTRA_CA_CERTS is not set (run: eval "$(ferrohub env)")');
    for (const v of ['FERROHUB_CA', 'FERROHUB_MQTT_PORT', 'FERROHUB_HTTPS_PORT']) {
      assert.ok(process.env[v], `${v} is not set (run: eval "$(ferrohub env)")`);
    }
    assert.ok(ferrohubBin && fs.existsSync(ferrohubBin), `FERROHUB_BIN is not an executable: ${ferrohubBin}`);
    registry = Registry.fromConnectionString(hubConnectionString);
    tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferrohub-node-rollout-'));
  });

  after(async () => {
    for (const c of [chiller, other]) {
      if (!c) continue;
      try { await c.close(); } catch (_) { /* already closed or the hub is gone */ }
    }
    if (agent && agent.exitCode === null && agent.signalCode === null) {
      agent.kill('SIGTERM');
      let timer;
      const stopped = await Promise.race([
        agentExited,
        new Promise((resolve) => { timer = setTimeout(() => resolve(false), 10000); }),
      ]);
      clearTimeout(timer);
      if (stopped === false) agent.kill('SIGKILL');
    }
    if (rolloutCreated && failedStep) {
      // A rollout left running would keep its configuration on the hub.
      try { await cli(['firmware', 'rollout', 'cancel', '--rollout-id', ROLLOUT_ID]); } catch (_) { /* best effort */ }
    }
    for (const id of [...Object.values(ids), OTHER_ID]) {
      try { await registry.delete(id); } catch (_) { /* never created, or the hub is gone */ }
    }
    if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
  });

  it('registers two devices tagged with this run\'s device type', step(async () => {
    for (const deviceId of Object.values(ids)) {
      const { responseBody: device } = await ok(registry.create({ deviceId }), `create ${deviceId}`);
      keys[deviceId] = device.authentication.symmetricKey.primaryKey;
      await ok(registry.updateTwin(deviceId, { tags: { devicetype: DEVICE_TYPE } }, '*'), `tag ${deviceId}`);
    }
    const { result: rows } = await ok(
      registry.createQuery(`SELECT deviceId FROM devices WHERE tags.devicetype = '${DEVICE_TYPE}'`, 100).next(),
      'query by device type');
    assert.deepEqual(rows.map((r) => r.deviceId).sort(), Object.values(ids).sort());
  }));

  it('device A runs the official-SDK chiller, which reports firmware 1.0.0', step(async () => {
    chiller = await ok(startChiller(deviceConnectionString(ids.sdk), { download: true, stepMs: STEP_MS }),
      `start chiller ${ids.sdk}`);
    await waitReported(ids.sdk, '1.0.0');
    assert.deepEqual(chiller.history, ['current']);
  }));

  it('device B runs the Rust agent, which reports firmware 1.0.0', step(async () => {
    const key = await cli(['firmware', 'public-key']);
    assert.equal(key.code, 0, `ferrohub firmware public-key: ${key.stderr}`);
    assert.match(key.stdout, /-----BEGIN PUBLIC KEY-----/);
    const keyFile = path.join(tmpDir, 'hub-public-key.pem');
    fs.writeFileSync(keyFile, key.stdout);
    const stateDir = path.join(tmpDir, 'agent-state');
    fs.mkdirSync(stateDir);

    agent = spawn(ferrohubBin, [
      'agent',
      '--connection-string', deviceConnectionString(ids.agent),
      '--state-dir', stateDir,
      '--public-key', keyFile,
      '--ca', process.env.FERROHUB_CA,
      '--mqtt-port', process.env.FERROHUB_MQTT_PORT,
    ], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    agentExited = new Promise((resolve) => agent.on('exit', (code, signal) => resolve({ code, signal })));
    agent.stdout.on('data', (c) => { agentOutput += c; });
    agent.stderr.on('data', (c) => { agentOutput += c; });

    await waitFor(`${ids.agent} (ferrohub agent) to report firmware 1.0.0 current`, async () => {
      if (agent.exitCode !== null || agent.signalCode !== null) {
        throw new Error(`ferrohub agent exited ${agent.exitCode} (${agent.signalCode}):\n${agentTail()}`);
      }
      const fw = fwOf(await twinOf(ids.agent));
      return { done: fw.currentFwVersion === '1.0.0' && fw.fwUpdateStatus === 'current', state: { fw } };
    });
  }));

  it('an image of 256 KiB is uploaded for this run\'s device type', step(async () => {
    const file = path.join(tmpDir, 'image.bin');
    const bytes = crypto.randomBytes(IMAGE_BYTES);
    fs.writeFileSync(file, bytes);
    image = await cliJson(['firmware', 'upload', '--version', VERSION, '--device-type', DEVICE_TYPE, file, '-o', 'json']);
    assert.equal(image.version, VERSION);
    assert.equal(image.size, IMAGE_BYTES);
    assert.equal(image.deviceType, DEVICE_TYPE);
    assert.equal(image.sha256, crypto.createHash('sha256').update(bytes).digest('hex'));
  }));

  it('a two-wave rollout is created and `firmware rollout watch` exits 0', step(async () => {
    const created = await cliJson(['firmware', 'rollout', 'create',
      '--rollout-id', ROLLOUT_ID,
      '--version', VERSION,
      '--target-condition', `tags.devicetype='${DEVICE_TYPE}'`,
      '--waves', '50,100',
      '--success-threshold', '100',
      '--failure-threshold', '50',
      '--soak', '2s',
      '-o', 'json']);
    rolloutCreated = true;
    assert.equal(created.id || created.rolloutId, ROLLOUT_ID, `created: ${JSON.stringify(created)}`);

    const watch = await cli(['firmware', 'rollout', 'watch', '--rollout-id', ROLLOUT_ID], WATCH_MS);
    const shown = `watch exit ${watch.code}${watch.timedOut ? ` (killed at the ${WATCH_MS / 1000} s cap)` : ''} `
      + `after ${watch.ms} ms\nstdout:\n${watch.stdout}\nstderr:\n${watch.stderr}\n`
      + `chiller history: ${JSON.stringify(chiller.history)} firmware ${JSON.stringify(chiller.firmware)}\n`
      + `agent output (tail):\n${agentTail()}`;
    assert.equal(watch.code, 0, shown);
    assert.ok(watch.stdout.trim().length > 0, `watch printed nothing\n${shown}`);
    // stdout is a pipe: plain lines, no terminal control sequences.
    assert.doesNotMatch(watch.stdout, /\x1b\[/, `watch wrote terminal escapes to a pipe\n${shown}`);
  }));

  it('the rollout shows succeeded with both devices succeeded', step(async () => {
    const shown = await cliJson(['firmware', 'rollout', 'show', '--rollout-id', ROLLOUT_ID, '-o', 'json']);
    const text = JSON.stringify(shown, null, 2);
    assert.equal(shown.state, 'succeeded', text);
    const members = shown.members || shown.devices;
    assert.ok(members, `no members in: ${text}`);
    const byId = Array.isArray(members)
      ? Object.fromEntries(members.map((m) => [m.deviceId, m]))
      : members;
    assert.deepEqual(Object.keys(byId).sort(), Object.values(ids).sort(), text);
    for (const id of Object.values(ids)) {
      assert.equal(byId[id].phase, 'succeeded', `${id}: ${text}`);
      assert.equal(byId[id].fromVersion, '1.0.0', `${id}: ${text}`);
    }
    // One device per wave (50 % of two, then the rest).
    assert.deepEqual(Object.values(ids).map((id) => byId[id].wave).sort(), [1, 2], text);
    assert.deepEqual(shown.totals, {
      devices: 2, waiting: 0, updating: 0, soaking: 0, succeeded: 2, failed: 0,
    }, text);
  }));

  it('both twins report the new version as current', step(async () => {
    for (const id of Object.values(ids)) {
      const twin = await twinOf(id);
      const fw = fwOf(twin);
      assert.equal(fw.currentFwVersion, VERSION, `${id} reported ${JSON.stringify(fw)}`);
      assert.equal(fw.fwUpdateStatus, 'current', `${id} reported ${JSON.stringify(fw)}`);
      const desired = ((twin.properties || {}).desired || {}).firmware || {};
      assert.equal(desired.fwVersion, VERSION, `${id} desired ${JSON.stringify(desired)}`);
      assert.equal(String(desired.fwPackageCheckValue).toLowerCase(), image.sha256);
    }
  }));

  it('the chiller really downloaded the image and walked every step', step(async () => {
    await chiller.idle();
    assert.deepEqual(chiller.history,
      ['current', 'downloading', 'verifying', 'applying', 'rebooting', 'current']);
    assert.equal(chiller.downloads.length, 1, JSON.stringify(chiller.downloads));
    const [download] = chiller.downloads;
    assert.equal(download.fwVersion, VERSION);
    assert.equal(download.bytes, IMAGE_BYTES);
    assert.equal(download.sha256, image.sha256);
    assert.ok(download.fwPackageURI.startsWith('https://'), download.fwPackageURI);
    // The hub hands the image out only with a valid device token.
    const forged = deviceSasToken(`HostName=${hostName()};DeviceId=${ids.sdk};SharedAccessKey=${
      Buffer.alloc(32).toString('base64')}`);
    await assert.rejects(downloadImage(download.fwPackageURI, forged), /HTTP 401/);
    await assert.rejects(downloadImage(download.fwPackageURI, ''), /HTTP 401/);
  }));

  it('a chiller handed an image whose SHA-256 does not match reports error, then rolledback', step(async () => {
    const { responseBody: device } = await ok(registry.create({ deviceId: OTHER_ID }), `create ${OTHER_ID}`);
    keys[OTHER_ID] = device.authentication.symmetricKey.primaryKey;
    await ok(registry.updateTwin(OTHER_ID, { tags: { devicetype: `${DEVICE_TYPE}-other` } }, '*'), `tag ${OTHER_ID}`);
    other = await ok(startChiller(deviceConnectionString(OTHER_ID), { download: true, stepMs: STEP_MS }),
      `start chiller ${OTHER_ID}`);
    await waitReported(OTHER_ID, '1.0.0');

    // The real image, but a check value that is not its SHA-256.
    const wrong = crypto.createHash('sha256').update('not the image').digest('hex');
    await ok(registry.updateTwin(OTHER_ID, { properties: { desired: { firmware: {
      fwVersion: `${VERSION}-bad`, fwPackageURI: image.fwPackageURI, fwPackageCheckValue: wrong,
    } } } }, '*'), `set desired firmware of ${OTHER_ID}`);
    await waitReported(OTHER_ID, '1.0.0', 'rolledback', () => ({ history: other.history }));
    await other.idle();
    assert.deepEqual(other.history, ['current', 'downloading', 'verifying', 'error', 'rolledback']);
    assert.equal(other.downloads.length, 1);
    assert.equal(other.downloads[0].sha256, image.sha256, 'the chiller downloaded the real image');

    // An image the hub does not have: the download itself fails.
    const missing = crypto.createHash('sha256').update('no such image').digest('hex');
    const missingUri = image.fwPackageURI.replace(/[0-9a-f]{64}$/, missing);
    assert.notEqual(missingUri, image.fwPackageURI);
    await ok(registry.updateTwin(OTHER_ID, { properties: { desired: { firmware: {
      fwVersion: `${VERSION}-missing`, fwPackageURI: missingUri, fwPackageCheckValue: missing,
    } } } }, '*'), `set desired firmware of ${OTHER_ID} again`);
    await waitFor(`${OTHER_ID} to fail the download of a missing image`, async () => {
      await other.idle();
      return { done: other.history.length >= 8, state: { history: other.history, firmware: other.firmware } };
    });
    assert.deepEqual(other.history.slice(5), ['downloading', 'error', 'rolledback']);
    assert.match((await twinOf(OTHER_ID)).properties.reported.firmware.fwUpdateSubstatus, /^kept 1\.0\.0$/);
    assert.equal(other.downloads.length, 1);
  }));
});
