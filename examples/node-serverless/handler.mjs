// A webhook receiver for the bridge shaped as a serverless function: it takes a
// web-standard Request and returns a Response, and verifies the Standard Webhooks
// v1 signature with Web Crypto (crypto.subtle). No npm dependency, so the same
// file runs on Node 20+ (see run.mjs), Deno, Bun, Cloudflare Workers, Vercel or
// Netlify edge functions and the like.
//
//   WEBHOOK_SECRET=whsec_... node run.mjs          # local runner, 127.0.0.1:9002
//
// The secret comes from env.WEBHOOK_SECRET when the platform passes an env object
// as the second argument (Cloudflare Workers), else from process.env.
//
// Answers: 204 once handled (or already handled: a duplicate), 401 for a missing
// or wrong signature or a timestamp more than 5 minutes off, 405 for anything but
// POST, 500 when the function is misconfigured or handle() throws. The bridge acks
// on 2xx, retries 5xx later and dead-letters any other 4xx as "dropped", so a
// wrong WEBHOOK_SECRET sends real messages to the dead-letter queue: fix the
// secret, then replay them.

const TOLERANCE_SECONDS = 5 * 60; // Standard Webhooks timestamp tolerance
const encoder = new TextEncoder();

// Your function. body is a Uint8Array (the raw bytes as published), headers a
// Headers object (case-insensitive). Throw to have the bridge retry the message.
async function handle(body, headers) {
  const tenant = headers.get("x-tenant"); // published with Bridge-Forward-X-Tenant
  console.log(
    `message ${headers.get("webhook-id")} subject=${headers.get("bridge-subject") ?? ""} ` +
      `subscription=${headers.get("bridge-subscription") ?? ""} ` +
      `delivery=${headers.get("redis-delivery-count") ?? ""} ` +
      `content-type=${JSON.stringify(headers.get("content-type") ?? "")}` +
      (tenant ? ` tenant=${tenant}` : "") +
      `\n${new TextDecoder().decode(body)}`,
  );
}

// webhook-id is stable across retries: remember recent ids to drop duplicates.
// In a serverless runtime this memory lives only as long as one warm instance;
// a real receiver records the id with the effect of the message (for example a
// unique key in the same database transaction).
const seen = new Set();
const MAX_SEEN = 10000;

export default async function handler(request, env) {
  if (request.method !== "POST") {
    return new Response("POST only\n", { status: 405, headers: { allow: "POST" } });
  }
  const secret = env?.WEBHOOK_SECRET ?? globalThis.process?.env?.WEBHOOK_SECRET;
  let key;
  try {
    key = await signingKey(secret);
  } catch (err) {
    console.error(`misconfigured: ${err.message}`);
    return new Response("receiver misconfigured\n", { status: 500 }); // retried, not dropped
  }

  // The signature covers the raw bytes: read them before anything parses the body.
  const body = new Uint8Array(await request.arrayBuffer());
  const id = request.headers.get("webhook-id");
  const reason = await verify(key, id, request.headers, body);
  if (reason) {
    console.warn(`rejected ${id ?? "(no webhook-id)"}: ${reason}`);
    return new Response("invalid signature\n", { status: 401 });
  }

  if (seen.has(id)) {
    console.log(`duplicate ${id} ignored`);
    return new Response(null, { status: 204 }); // already handled: ack again
  }
  try {
    await handle(body, request.headers);
  } catch (err) {
    console.error(`handling ${id} failed:`, err);
    return new Response("handler failed\n", { status: 500 }); // the bridge retries it
  }
  seen.add(id);
  if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value); // oldest first
  return new Response(null, { status: 204 });
}

// verify returns undefined when the push is authentic, else why it is not.
async function verify(key, id, headers, body) {
  const timestamp = headers.get("webhook-timestamp");
  const signatures = headers.get("webhook-signature");
  if (!id || !timestamp || !signatures) return "missing webhook-id, webhook-timestamp or webhook-signature";
  if (!/^\d{1,15}$/.test(timestamp)) return "bad webhook-timestamp";
  const skew = Math.abs(Date.now() / 1000 - Number(timestamp));
  if (skew > TOLERANCE_SECONDS) return "webhook-timestamp outside the 5 minute tolerance";

  // Signed content: "{webhook-id}.{webhook-timestamp}.{body}" over the raw body bytes.
  const prefix = encoder.encode(`${id}.${timestamp}.`);
  const signed = new Uint8Array(prefix.length + body.length);
  signed.set(prefix, 0);
  signed.set(body, prefix.length);

  // Several space-separated entries while a rotated secret is live: accept any v1
  // match. crypto.subtle.verify compares the MACs in constant time.
  for (const entry of signatures.trim().split(/\s+/)) {
    if (!entry.startsWith("v1,")) continue; // another scheme, or an empty field
    const mac = base64Decode(entry.slice(3));
    if (mac && (await crypto.subtle.verify("HMAC", key, mac, signed))) return undefined;
  }
  return "no matching v1 signature";
}

// The HMAC key is the base64 part of the secret after "whsec_"; imported once.
let cached = { secret: undefined, key: undefined };
async function signingKey(secret) {
  if (cached.secret === secret && cached.key) return cached.key;
  if (!secret?.startsWith("whsec_")) throw new Error("WEBHOOK_SECRET must be set to the subscription's whsec_... secret");
  const raw = base64Decode(secret.slice("whsec_".length));
  if (!raw?.length) throw new Error("WEBHOOK_SECRET: not base64 after whsec_");
  const key = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  cached = { secret, key };
  return key;
}

function base64Decode(s) {
  try {
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  } catch {
    return undefined; // not base64
  }
}
