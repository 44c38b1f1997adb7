// Build the demo page's markdown bundle: markdown-it and DOMPurify as one ES module, committed at
// dev/llm_relay_dev/vendor/markdown.bundle.js so that `make dev` needs no npm.
//
//   node clients/browser/scripts/build-vendor.mjs
//
// The versions are exact in scripts/vendor/package.json and locked (with integrity hashes) in its package-lock.json;
// `npm ci` installs exactly those, esbuild bundles them, and the bundle's first line names the versions it holds
// (tests/integration/test_demo_page.py checks that line against package.json). The renderer itself
// (clients/browser/renderer.js) imports nothing: a page passes it `{ render, sanitize }` built from this bundle.

import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "vendor");
const output = join(here, "..", "..", "..", "dev", "llm_relay_dev", "vendor", "markdown.bundle.js");
const pinned = JSON.parse(readFileSync(join(vendor, "package.json"), "utf8")).dependencies;

const ENTRY = `
export { default as MarkdownIt } from "markdown-it";
export { default as DOMPurify } from "dompurify";
`;

execFileSync("npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund"], { cwd: vendor, stdio: "inherit" });
const { build } = await import(join(vendor, "node_modules", "esbuild", "lib", "main.js"));
const result = await build({
  stdin: { contents: ENTRY, resolveDir: vendor, loader: "js" },
  bundle: true,
  format: "esm",
  minify: true,
  legalComments: "eof",
  target: "es2020",
  write: false,
});
const header = `// markdown-it ${pinned["markdown-it"]} + dompurify ${pinned.dompurify}, bundled by esbuild ` +
  `${pinned.esbuild} (clients/browser/scripts/build-vendor.mjs). Generated: do not edit.\n`;
mkdirSync(dirname(output), { recursive: true });
writeFileSync(output, header + result.outputFiles[0].text);
console.log(`wrote ${output} (${result.outputFiles[0].text.length} bytes)`);
