// A tiny local runner for handler.mjs: a node:http server that turns each incoming
// request into a web-standard Request, calls the handler and writes its Response
// back. On a serverless platform the platform does this part; deploy handler.mjs.
//
//   WEBHOOK_SECRET=whsec_... node run.mjs                  # 127.0.0.1:9002
//   WEBHOOK_SECRET=whsec_... HOST=127.0.0.1 PORT=9100 node run.mjs
//
// Node 20 or later, no npm install.
import http from "node:http";
import handler from "./handler.mjs";

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 9002);
const maxBody = 10 * 1024 * 1024;

if (!process.env.WEBHOOK_SECRET?.startsWith("whsec_")) {
  console.error("WEBHOOK_SECRET (the subscription's whsec_... secret) is required");
  process.exit(1);
}

const server = http.createServer(async (req, res) => {
  try {
    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
      size += chunk.length;
      if (size > maxBody) {
        res.writeHead(413, { "content-type": "text/plain", connection: "close" });
        res.end("body too large\n");
        req.destroy();
        return;
      }
      chunks.push(chunk);
    }
    const headers = new Headers();
    for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i], req.rawHeaders[i + 1]);
    const hasBody = req.method !== "GET" && req.method !== "HEAD";
    const request = new Request(new URL(req.url, `http://${host}:${port}`), {
      method: req.method,
      headers,
      body: hasBody ? Buffer.concat(chunks) : undefined,
    });

    const response = await handler(request);

    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  } catch (err) {
    console.error("runner:", err);
    if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
    res.end("internal error\n");
  }
});

server.listen(port, host, () => console.log(`listening on http://${host}:${port}/`));
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref(); // do not wait for a stuck client
  });
}
