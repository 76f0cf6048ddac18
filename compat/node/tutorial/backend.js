#!/usr/bin/env node
'use strict';
// The back end of Azure's tutorial "Implement a device firmware update
// process", written for ferrohub with nothing but the official service SDK
// (npm `azure-iothub` 1.16.6) and a hub connection string. The tutorial's
// back end uses the `service` policy: configurations and their metrics need
// ServiceConnect only.
//
// It creates the automatic device configuration `firmware285`, which asks
// every twin tagged `devicetype = 'chiller'` for firmware 2.8.5, and then
// watches the configuration: one JSON line per change of its system metrics
// (targetedCount, appliedCount) and custom metrics (how many devices report
// each fwUpdateStatus).
//
//   eval "$(ferrohub env)"
//   node backend.js "$(ferrohub connection-string show --policy-name service -o tsv)" \
//     --until targetedCount=2,appliedCount=2,current=2 --timeout 120
//
// Usage: backend.js [CONNECTION_STRING] [--until COND] [--timeout SECONDS]
//                   [--interval MS] [--watch-only] [--delete]
//   CONNECTION_STRING  a hub connection string; default: IOTHUB_CONNECTION_STRING
//   --until COND       stop when every `name=N` / `name>=N` (comma-separated)
//                      holds; names are system metrics (targetedCount,
//                      appliedCount) or custom metrics (current, applying, ...)
//   --timeout SECONDS  give up after this long (default 300); exit 1 if --until
//                      was given and never held, else exit 0
//   --interval MS      time between two reads of the configuration (default 1000)
//   --watch-only       do not create the configuration, only watch it
//   --delete           delete the configuration and exit
//
// The functions are exported for compat/node/test/tutorial.test.js.

const { Registry } = require('azure-iothub');

const CONFIGURATION_ID = 'firmware285';

// The statuses a chiller reports in properties.reported.firmware.fwUpdateStatus,
// grouped into the tutorial's five metrics.
const METRIC_STATUSES = {
  current: ['current'],
  applying: ['downloading', 'verifying', 'applying'],
  rebooting: ['rebooting'],
  error: ['error'],
  rolledback: ['rolledback'],
};

// `SELECT deviceId FROM devices WHERE configurations.[[id]].status='Applied'
// AND <the status clause>`; several statuses are ORed inside parentheses.
function metricQuery(configurationId, statuses) {
  const clause = (status) => `properties.reported.firmware.fwUpdateStatus='${status}'`;
  const condition = statuses.length === 1
    ? clause(statuses[0])
    : `(${statuses.map(clause).join(' OR ')})`;
  return `SELECT deviceId FROM devices WHERE configurations.[[${configurationId}]].status='Applied' AND ${condition}`;
}

function metricQueries(configurationId) {
  const queries = {};
  for (const [name, statuses] of Object.entries(METRIC_STATUSES)) {
    queries[name] = metricQuery(configurationId, statuses);
  }
  return queries;
}

// The tutorial's configuration; every field can be overridden (the test makes
// a second, higher-priority one the same way).
function firmwareConfiguration(options = {}) {
  const id = options.id || CONFIGURATION_ID;
  return {
    id,
    content: {
      deviceContent: {
        'properties.desired.firmware': {
          fwVersion: options.fwVersion || '2.8.5',
          fwPackageURI: options.fwPackageURI || 'https://secureuri/package.bin',
          fwPackageCheckValue: options.fwPackageCheckValue || '123456abcde',
        },
      },
    },
    metrics: { queries: metricQueries(id) },
    targetCondition: options.targetCondition || "tags.devicetype = 'chiller'",
    priority: options.priority === undefined ? 20 : options.priority,
  };
}

function registryFrom(connectionString) {
  if (!connectionString) {
    throw new Error('no connection string: pass one or set IOTHUB_CONNECTION_STRING');
  }
  return Registry.fromConnectionString(connectionString);
}

// Creates the configuration; resolves with the configuration the hub answered.
async function createConfiguration(registry, configuration = firmwareConfiguration()) {
  const { responseBody } = await registry.addConfiguration(configuration);
  return responseBody;
}

async function deleteConfiguration(registry, configurationId = CONFIGURATION_ID) {
  await registry.removeConfiguration(configurationId);
}

// The two result maps of the configuration, as the hub computes them now.
async function readMetrics(registry, configurationId = CONFIGURATION_ID) {
  const { responseBody: configuration } = await registry.getConfiguration(configurationId);
  return {
    systemMetrics: { ...((configuration.systemMetrics || {}).results || {}) },
    metrics: { ...((configuration.metrics || {}).results || {}) },
    configuration,
  };
}

// `targetedCount=2,current>=1` → [{name, op, value}].
function parseCondition(text) {
  if (!text) return [];
  return text.split(',').map((part) => {
    const m = /^\s*([A-Za-z0-9_$-]+)\s*(>=|<=|=)\s*(-?\d+)\s*$/.exec(part);
    if (!m) throw new Error(`bad condition '${part}': expected name=N, name>=N or name<=N`);
    return { name: m[1], op: m[2], value: Number(m[3]) };
  });
}

// Whether every clause holds for the results; a metric not reported yet
// counts as 0 (Azure leaves results empty until the first evaluation).
function conditionHolds(clauses, results) {
  return clauses.every(({ name, op, value }) => {
    const merged = { ...results.metrics, ...results.systemMetrics };
    const actual = Number(merged[name] || 0);
    if (op === '>=') return actual >= value;
    if (op === '<=') return actual <= value;
    return actual === value;
  });
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// Reads the configuration every `intervalMs` and hands each reading that
// differs from the previous one to `onResults`. Resolves with
// `{met, results}` as soon as `until(results)` holds, or with `met: false`
// after `timeoutMs` (`until` absent: runs for the whole timeout).
async function watchMetrics(registry, configurationId, options = {}) {
  const {
    until = null,
    timeoutMs = 300000,
    intervalMs = 1000,
    onResults = () => {},
  } = options;
  const deadline = Date.now() + timeoutMs;
  let previous = null;
  let results = null;
  for (;;) {
    const reading = await readMetrics(registry, configurationId);
    results = { systemMetrics: reading.systemMetrics, metrics: reading.metrics };
    const text = JSON.stringify(results);
    if (text !== previous) {
      previous = text;
      onResults(results);
    }
    if (until && until(results)) return { met: true, results };
    const left = deadline - Date.now();
    if (left <= 0) return { met: false, results };
    await sleep(Math.min(intervalMs, left));
  }
}

function parseArgs(argv) {
  const args = {
    connectionString: process.env.IOTHUB_CONNECTION_STRING,
    until: null,
    timeoutMs: 300000,
    intervalMs: 1000,
    create: true,
    delete: false,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[i];
    };
    if (arg === '--until') args.until = parseCondition(value());
    else if (arg === '--timeout') args.timeoutMs = Number(value()) * 1000;
    else if (arg === '--interval') args.intervalMs = Number(value());
    else if (arg === '--watch-only') args.create = false;
    else if (arg === '--delete') args.delete = true;
    else if (arg === '--help' || arg === '-h') args.help = true;
    else if (arg.startsWith('-')) throw new Error(`unknown option ${arg}`);
    else args.connectionString = arg;
  }
  if (!Number.isFinite(args.timeoutMs) || args.timeoutMs < 0) throw new Error('bad --timeout');
  if (!Number.isFinite(args.intervalMs) || args.intervalMs <= 0) throw new Error('bad --interval');
  return args;
}

function errorText(err) {
  let text = `${err.constructor && err.constructor.name}: ${err.message}`;
  if (err.response) text += ` (HTTP ${err.response.statusCode}, body ${JSON.stringify(err.responseBody)})`;
  return text;
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`backend: ${err.message}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write('usage: backend.js [CONNECTION_STRING] [--until COND] [--timeout SECONDS] '
      + '[--interval MS] [--watch-only] [--delete]\n');
    return 0;
  }
  const registry = registryFrom(args.connectionString);
  if (args.delete) {
    await deleteConfiguration(registry);
    process.stderr.write(`deleted configuration ${CONFIGURATION_ID}\n`);
    return 0;
  }
  if (args.create) {
    const created = await createConfiguration(registry);
    process.stderr.write(`created configuration ${created.id} (priority ${created.priority}, `
      + `target ${created.targetCondition})\n`);
  }
  const until = args.until ? (results) => conditionHolds(args.until, results) : null;
  const { met } = await watchMetrics(registry, CONFIGURATION_ID, {
    until,
    timeoutMs: args.timeoutMs,
    intervalMs: args.intervalMs,
    onResults: (results) => process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...results })}\n`),
  });
  if (until && !met) {
    process.stderr.write(`backend: the condition did not hold within ${args.timeoutMs / 1000} s\n`);
    return 1;
  }
  return 0;
}

module.exports = {
  CONFIGURATION_ID,
  METRIC_STATUSES,
  metricQuery,
  metricQueries,
  firmwareConfiguration,
  registryFrom,
  createConfiguration,
  deleteConfiguration,
  readMetrics,
  parseCondition,
  conditionHolds,
  watchMetrics,
  main,
};

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => {
      process.stderr.write(`backend: ${errorText(err)}\n`);
      process.exitCode = 1;
    },
  );
}
