// Validates an AsyncAPI document with the official parser (@asyncapi/parser), offline.
// Usage: node asyncapi_validate.js FILE
// Prints one JSON object: {"version", "channels", "operations", "messages", "diagnostics": [...]}
// (every diagnostic the parser reported, errors and warnings alike) and exits 0 when the
// document parsed without errors, 1 otherwise.
'use strict';

const fs = require('fs');
const path = require('path');
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information',
  [DiagnosticSeverity.Hint]: 'hint',
};

async function main() {
  const file = path.resolve(process.argv[2]);
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'), {
    source: file,
  });
  const report = {
    version: document ? document.version() : null,
    channels: document ? document.channels().length : 0,
    operations: document ? document.operations().length : 0,
    messages: document ? document.allMessages().length : 0,
    diagnostics: diagnostics.map((d) => ({
      severity: SEVERITY[d.severity],
      code: d.code,
      message: d.message,
      path: d.path.join('.'),
    })),
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exitCode = document && !report.diagnostics.some((d) => d.severity === 'error') ? 0 : 1;
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exitCode = 2;
});
