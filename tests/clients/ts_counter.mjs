// The official TypeScript MCP client (@modelcontextprotocol/client, pinned in
// tests/clients/npm/package.json) against `python -m supervisor serve`.
//
// Usage: node ts_counter.mjs CLIENTS_DIR URL MODE
//   CLIENTS_DIR  where scripts/setup-clients.sh ran `npm ci` (.tools/clients)
//   MODE         "auto" (2026-07-28 era, probed with server/discover) or "legacy" (handshake era)
//
// Connects over Streamable HTTP, opens two state handles, counts through them, counts without a
// handle, closes one handle and calls it again; prints one JSON object with what it saw.
// tests/test_mcp_clients.py runs it and asserts on that object.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [clientsDir, url, mode] = process.argv.slice(2);
if (!clientsDir || !url || !["auto", "legacy"].includes(mode)) {
  console.error("usage: node ts_counter.mjs CLIENTS_DIR URL auto|legacy");
  process.exit(2);
}

// The package's own ESM entry point, as its exports map names it (the install lives outside
// this directory, so a bare `import "@modelcontextprotocol/client"` would not find it).
const packageDir = join(clientsDir, "node_modules", "@modelcontextprotocol", "client");
const manifest = JSON.parse(readFileSync(join(packageDir, "package.json"), "utf8"));
const entry = pathToFileURL(join(packageDir, manifest.exports["."].import.default));
const { Client, StreamableHTTPClientTransport } = await import(entry.href);

const client = new Client(
  { name: "ts-counter", version: "0.0.0" },
  { versionNegotiation: { mode } },
);
await client.connect(new StreamableHTTPClientTransport(new URL(url)));

async function call(name, args) {
  const result = await client.callTool({ name, arguments: args });
  return { isError: result.isError ?? false, structured: result.structuredContent ?? null };
}

async function count(session) {
  const result = await call("counter", session === undefined ? {} : { session });
  if (result.isError) throw new Error(`counter failed: ${JSON.stringify(result)}`);
  return result.structured.count;
}

async function openHandle() {
  const opened = await call("open_session", {});
  if (opened.isError) throw new Error(`open_session failed: ${JSON.stringify(opened)}`);
  return opened.structured.session;
}

const tools = (await client.listTools()).tools.map((tool) => tool.name);
const first = await openHandle();
const second = await openHandle();
const firstCounts = [];
for (let i = 0; i < 3; i++) firstCounts.push(await count(first));
const secondCounts = [await count(second)];
const withoutHandle = [await count(undefined), await count(undefined)];
const closed = await call("close_session", { session: first });
const afterClose = await call("counter", { session: first });

console.log(
  JSON.stringify({
    era: client.getProtocolEra(),
    protocolVersion: client.getNegotiatedProtocolVersion(),
    tools,
    handleLength: first.length,
    distinctHandles: first !== second,
    firstCounts,
    secondCounts,
    withoutHandle,
    closed,
    afterClose,
  }),
);
await client.close();
