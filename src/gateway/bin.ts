#!/usr/bin/env node
import { main } from './cli.js';

try {
  process.exitCode = await main(process.argv.slice(2), process.env);
} catch (error) {
  // Not expected (settings errors are answered in main): one line, not a stack trace.
  process.stderr.write(`idemkit: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
