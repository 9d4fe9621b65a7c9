// A webhook receiver for the Rust tests (`events::webhooks_...`): every request is verified with
// the Standard Webhooks library from npm (`standardwebhooks`), the second implementation the
// signatures are judged by. It answers by path, so a test can ask for failures:
//   /ok                always 200
//   /fail-first/N      500 for the first N requests to that path, then 200
//   /slow              answers after 5 s (longer than the sender's timeout)
// One JSON line per request on stdout: {path, id, timestamp, verified, error, type, position}.
// The first line is {"port": N}. The secrets to accept are read, at each request, from the
// JSON array in the file SECRETS_FILE.
import http from "node:http";
import fs from "node:fs";
import { Webhook } from "standardwebhooks";

const seen = new Map();

function verify(body, headers) {
  let secrets = [];
  try {
    secrets = JSON.parse(fs.readFileSync(process.env.SECRETS_FILE, "utf8"));
  } catch {}
  let last = "no secret";
  for (const s of secrets) {
    try {
      new Webhook(s).verify(body, headers);
      return [true, null];
    } catch (e) {
      last = String(e && e.message ? e.message : e);
    }
  }
  return [false, last];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const headers = {
      "webhook-id": req.headers["webhook-id"],
      "webhook-timestamp": req.headers["webhook-timestamp"],
      "webhook-signature": req.headers["webhook-signature"],
    };
    const [verified, error] = verify(body, headers);
    let payload = {};
    try {
      payload = JSON.parse(body);
    } catch {}
    const line = { path: req.url, id: headers["webhook-id"], timestamp: headers["webhook-timestamp"], verified, error, type: payload.type, position: payload.position };
    const n = (seen.get(req.url) || 0) + 1;
    seen.set(req.url, n);
    const failFirst = /^\/fail-first\/(\d+)$/.exec(req.url);
    let status = 200;
    if (failFirst && n <= Number(failFirst[1])) status = 500;
    line.status = status;
    const answer = () => {
      process.stdout.write(JSON.stringify(line) + "\n");
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(status === 200 ? "thanks" : "not now");
    };
    if (req.url === "/slow") setTimeout(answer, 5000);
    else answer();
  });
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n");
});
