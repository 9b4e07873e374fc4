// A serverless function that takes longer than any sane request timeout: it verifies the
// push, answers 202 with Bridge-Ack-Deadline at once (the bridge keeps the message,
// unsettled, without holding a push slot), does its slow work, then settles the message
// with the lease token its push carried — no API token needed:
//
//   POST {BRIDGE_URL}/v1/subscriptions/{bridge-subscription}/messages/{webhook-id}/ack
//   Bridge-Lease-Token: {bridge-lease-token}
//
// On failure it nacks ({"delay": "30s"}: delivered again later; {"dead_letter": true}: to
// the dead-letter queue). If the function dies, the deadline passes and the bridge
// delivers the message again (a failed attempt, as a timeout). For work longer than the
// deadline, POST .../extend {"deadline": "10m"} before it passes.
//
//   WEBHOOK_SECRET=whsec_... BRIDGE_URL=http://127.0.0.1:8080 node run.mjs   # 127.0.0.1:9004
//
// On platforms that end a function with its response, hand the work to the platform's
// waitUntil (Cloudflare Workers, Vercel, Netlify): ctx.waitUntil(work). Node 20+, no
// dependencies (Web Crypto, fetch).

const DEADLINE = "10m"; // how long the bridge waits for the ack before delivering again
const TOLERANCE_SECONDS = 5 * 60;
const encoder = new TextEncoder();

// Your slow work. Throw to have the message delivered again after 30 s.
async function work(body, headers) {
  const ms = Number(globalThis.process?.env?.WORK_MS ?? 2000);
  await new Promise((resolve) => setTimeout(resolve, ms));
  console.log(`worked ${ms} ms on ${headers.get("webhook-id")}: ${new TextDecoder().decode(body)}`);
}

export default async function handler(request, env, ctx) {
  if (request.method !== "POST") return new Response("POST only\n", { status: 405 });
  const secret = env?.WEBHOOK_SECRET ?? globalThis.process?.env?.WEBHOOK_SECRET;
  const bridge = env?.BRIDGE_URL ?? globalThis.process?.env?.BRIDGE_URL;
  const body = new Uint8Array(await request.arrayBuffer());
  const h = request.headers;
  const reason = await verify(secret, h, body);
  if (reason) {
    console.warn(`rejected ${h.get("webhook-id") ?? "(no id)"}: ${reason}`);
    return new Response("invalid signature\n", { status: 401 });
  }
  const token = h.get("bridge-lease-token");
  if (!token || !bridge) {
    // Pub/Sub and simple lists carry no lease (nothing to settle later): work inline.
    await work(body, h);
    return new Response(null, { status: 204 });
  }
  const settle = (action, payload) =>
    fetch(`${bridge}/v1/subscriptions/${encodeURIComponent(h.get("bridge-subscription"))}/messages/` +
      `${encodeURIComponent(h.get("webhook-id"))}/${action}`, {
      method: "POST",
      headers: { "bridge-lease-token": token, "content-type": "application/json" },
      body: payload ? JSON.stringify(payload) : undefined,
    }).then(async (res) => {
      // 409: the deadline passed first and the message is delivered again; 403: not our lease.
      console.log(`${action} ${h.get("webhook-id")}: ${res.status}${res.ok ? "" : " " + (await res.text())}`);
    });
  const done = work(body, h).then(
    () => settle("ack"),
    (err) => {
      console.error(`work on ${h.get("webhook-id")} failed:`, err);
      return settle("nack", { delay: "30s" });
    },
  );
  ctx?.waitUntil?.(done);
  return new Response(null, { status: 202, headers: { "bridge-ack-deadline": DEADLINE } });
}

// verify returns undefined when the push is authentic (Standard Webhooks v1), else why not.
async function verify(secret, h, body) {
  if (!secret?.startsWith("whsec_")) return "WEBHOOK_SECRET is not set";
  const id = h.get("webhook-id"), ts = h.get("webhook-timestamp"), sigs = h.get("webhook-signature");
  if (!id || !ts || !sigs || !/^\d{1,15}$/.test(ts)) return "missing or bad webhook headers";
  if (Math.abs(Date.now() / 1000 - Number(ts)) > TOLERANCE_SECONDS) return "timestamp outside 5 minutes";
  const raw = Uint8Array.from(atob(secret.slice(6)), (c) => c.charCodeAt(0));
  const key = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  const prefix = encoder.encode(`${id}.${ts}.`);
  const signed = new Uint8Array(prefix.length + body.length);
  signed.set(prefix, 0);
  signed.set(body, prefix.length);
  for (const entry of sigs.trim().split(/\s+/)) {
    if (!entry.startsWith("v1,")) continue;
    let mac;
    try {
      mac = Uint8Array.from(atob(entry.slice(3)), (c) => c.charCodeAt(0));
    } catch {
      continue;
    }
    if (await crypto.subtle.verify("HMAC", key, mac, signed)) return undefined;
  }
  return "no matching v1 signature";
}
