// node:test reporter that prints one closing line `N passed, N failed`
// (plus `, N skipped` when any were skipped), the plain line CI reads.
// Only leaf tests count: describe() suites and the per-file wrapper
// tests are left out, except a file that failed as a whole without any of
// its own tests failing (syntax error, crash, missing environment): that
// file counts as one failure, so the line never says 0 failed on a red run.
export default async function* summary(source) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  // Per file: how many of its leaf tests failed, and whether it failed as a whole.
  const files = new Map();
  for await (const event of source) {
    if (event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const data = event.data;
    const file = data.file ?? '';
    const entry = files.get(file) ?? { failedLeaves: 0, failed: false };
    files.set(file, entry);
    if (data.details?.type === 'suite') continue;
    const isFileWrapper = data.nesting === 0 && file !== '' && data.name === file;
    if (isFileWrapper) {
      if (event.type === 'test:fail') entry.failed = true;
      continue;
    }
    if (data.skip || data.todo) skipped += 1;
    else if (event.type === 'test:pass') passed += 1;
    else {
      failed += 1;
      entry.failedLeaves += 1;
    }
  }
  for (const entry of files.values()) {
    if (entry.failed && entry.failedLeaves === 0) failed += 1;
  }
  yield `${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`;
}
