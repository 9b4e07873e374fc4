// A local runner for handler.mjs (node:http in, web-standard Request/Response out), with a
// waitUntil that lets the function's work go on after its response, as platforms do.
//
//   WEBHOOK_SECRET=whsec_... BRIDGE_URL=http://127.0.0.1:8080 node run.mjs   # 127.0.0.1:9004
import http from "node:http";
import handler from "./handler.mjs";

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 9004);
const pending = new Set();
const ctx = { waitUntil: (p) => { pending.add(p); p.finally(() => pending.delete(p)); } };

const server = http.createServer(async (req, res) => {
  try {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const headers = new Headers();
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
    const request = new Request(new URL(req.url, `http://${host}:${port}`), {
      method: req.method, headers, body: req.method === "POST" ? Buffer.concat(chunks) : undefined,
    });
    const response = await handler(request, undefined, ctx);
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  } catch (err) {
    console.error("runner:", err);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  }
});

server.listen(port, host, () => console.log(`listening on http://${host}:${port}/`));
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    server.close();
    await Promise.allSettled([...pending]); // finish (and settle) the work in hand
    process.exit(0);
  });
}
