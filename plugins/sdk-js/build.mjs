#!/usr/bin/env node
// Builds a JavaScript plugin into a WebAssembly component for the `infergate:plugin/plugin`
// world: the app and what it imports (relative, absolute or npm packages) are bundled into one
// module with rolldown, the world's interfaces (`wasi:*`, `infergate:*`) left as imports, and
// the bundle is componentized with the componentize-js API (`jco componentize` does the same
// through a wasm-tools shim that fails on some machines).
//
//   node plugins/sdk-js/build.mjs APP.js OUT.wasm [--wit DIR] [--world NAME] [--keep-bundle]
//
// The WIT defaults to the repository's wit/ (found relative to this script). `--keep-bundle`
// writes the bundle beside OUT (OUT.bundle.js): the file and line numbers of stack traces in the
// host's log refer to it. Install the tools once with `npm ci --prefix plugins/sdk-js`.

import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SDK_DIR = dirname(fileURLToPath(import.meta.url));
const USAGE = 'usage: node build.mjs APP.js OUT.wasm [--wit DIR] [--world NAME] [--keep-bundle]';
/** Imports the component gets from the host, not from files. */
const WORLD_IMPORT = /^(wasi|infergate):/;

function parseArgs(argv) {
  const options = { wit: resolve(SDK_DIR, '../../wit'), world: 'plugin', keepBundle: false };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--wit' || arg === '--world') {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value\n${USAGE}`);
      options[arg.slice(2)] = argv[++i];
    } else if (arg === '--keep-bundle') {
      options.keepBundle = true;
    } else if (arg === '-h' || arg === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else if (arg.startsWith('-')) {
      throw new Error(`unknown option ${arg}\n${USAGE}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 2) throw new Error(USAGE);
  return { app: resolve(positional[0]), out: resolve(positional[1]), ...options, wit: resolve(options.wit) };
}

/** Imports a build tool, or says how to install it. */
async function tool(name) {
  try {
    return await import(name);
  } catch {
    throw new Error(`${name} is not installed: run \`npm ci --prefix ${relative(process.cwd(), SDK_DIR) || '.'}\``);
  }
}

/** The app and everything it imports from files, as one ES module. */
async function bundle(app) {
  const { rolldown } = await tool('rolldown');
  const build = await rolldown({
    input: app,
    platform: 'neutral',
    external: (id) => WORLD_IMPORT.test(id),
    // `#wit` (package.json "imports") resolves to the world's interfaces under this condition.
    resolve: { conditionNames: ['infergate-component', 'import', 'module', 'default'] },
    logLevel: 'warn',
  });
  try {
    const { output } = await build.generate({ format: 'esm', codeSplitting: false, keepNames: true });
    return output[0].code;
  } finally {
    await build.close();
  }
}

async function main() {
  const { app, out, wit, world, keepBundle } = parseArgs(process.argv.slice(2));
  const { componentize } = await tool('@bytecodealliance/componentize-js');
  const started = performance.now();

  const code = await bundle(app);
  const bundled = performance.now();
  // componentize-js lets the module see the directory it runs in (mapped as `/`): a fresh one
  // holding only the bundle.
  const work = await mkdtemp(join(tmpdir(), 'infergate-js-'));
  let component;
  try {
    const source = join(work, basename(app));
    await writeFile(source, code);
    process.chdir(work);
    ({ component } = await componentize({
      sourcePath: source,
      witPath: wit,
      worldName: world,
      // The SDK exports `incomingHandler` itself: StarlingMonkey's fetch-event handler is not used.
      disableFeatures: ['fetch-event'],
    }));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  const seconds = (performance.now() - started) / 1000;

  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, component);
  if (keepBundle) await writeFile(out.replace(/\.wasm$/, '') + '.bundle.js', code);
  const mib = component.byteLength / (1 << 20);
  const bundleSeconds = (bundled - started) / 1000;
  console.log(`built ${out} (${mib.toFixed(1)} MiB) in ${seconds.toFixed(1)} s (bundling ${bundleSeconds.toFixed(1)} s)`);
}

main().catch((err) => {
  console.error(`build failed: ${err.message ?? err}`);
  process.exit(1);
});
