// A minimal webhook receiver for the bridge, shaped like a serverless function:
// verify the Standard Webhooks signature, skip duplicates, handle, answer 204.
//
//   WEBHOOK_SECRET=whsec_... PORT=9001 node index.js
//
// The bridge acks on 2xx, retries on 408/425/429/5xx (honouring Retry-After)
// and dead-letters any other 4xx as "dropped". A bad signature is answered 401:
// with a wrong WEBHOOK_SECRET real messages land in the dead-letter queue, to be
// replayed once the secret is fixed. Throwing inside handle() answers 500, so the
// bridge retries the message later.
import http from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error("WEBHOOK_SECRET (whsec_...) is required");
  process.exit(1);
}
// The package accepts the secret with its whsec_ prefix and base64-decodes the rest.
const wh = new Webhook(secret);
const port = Number(process.env.PORT || 9001);
const host = process.env.HOST || "127.0.0.1";
const maxBody = 10 * 1024 * 1024;

// webhook-id is stable across retries: remember recent ids to drop duplicates.
const seen = new Set();
const maxSeen = 10000;
function firstTime(id) {
  if (seen.has(id)) return false;
  seen.add(id);
  if (seen.size > maxSeen) seen.delete(seen.values().next().value); // oldest first
  return true;
}

// Your function: body is a Buffer, headers are lower-case.
async function handle(body, headers) {
  console.log(
    `message ${headers["webhook-id"]} subject=${headers["bridge-subject"]} ` +
      `subscription=${headers["bridge-subscription"]} delivery=${headers["redis-delivery-count"]} ` +
      `content-type=${headers["content-type"] ?? ""}\n${body.toString("utf8")}`,
  );
}

function answer(res, status, text) {
  res.writeHead(status, text ? { "content-type": "text/plain" } : {});
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method !== "POST") {
    res.setHeader("allow", "POST");
    return answer(res, 405, "POST only\n");
  }
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size > maxBody) {
      answer(res, 413, "body too large\n");
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on("end", async () => {
    if (res.headersSent) return;
    const body = Buffer.concat(chunks);
    try {
      // Verifies webhook-signature (any of its space-separated v1 entries, in
      // constant time) and rejects timestamps more than 5 minutes off.
      // jsonParse: false so non-JSON bodies verify too. The package signs the
      // body as a UTF-8 string, so a body that is not valid UTF-8 fails here;
      // verify such bodies with node:crypto over the raw bytes instead.
      wh.verify(body, req.headers, { jsonParse: false });
    } catch (err) {
      if (err instanceof WebhookVerificationError) {
        console.warn(`rejected ${req.headers["webhook-id"] ?? "(no id)"}: ${err.message}`);
        return answer(res, 401, "invalid signature\n");
      }
      console.error(err);
      return answer(res, 500, "internal error\n");
    }
    const id = req.headers["webhook-id"];
    if (!firstTime(id)) {
      console.log(`duplicate ${id} ignored`);
      return answer(res, 204);
    }
    try {
      await handle(body, req.headers);
      answer(res, 204);
    } catch (err) {
      seen.delete(id); // not handled: let the bridge's retry through
      console.error(`handling ${id} failed:`, err);
      answer(res, 500, "handler failed\n");
    }
  });
});

server.listen(port, host, () => console.log(`listening on http://${host}:${port}/`));
