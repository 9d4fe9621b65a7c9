// Passkeys and security keys on the hosted pages in headless Chromium, with a virtual
// authenticator (DevTools protocol, WebAuthn domain), driven by the Rust test
// `mfa_browser::passkeys_register_sign_in_and_refuse_a_wrong_origin_and_a_cloned_key_in_a_real_browser`
// (which sets up the project and the user and checks what this script reports against the
// server's tokens, audit log and stored counter):
// a. the user signs in with the password on the security page's way in and adds a key;
// b. a passkey sign-in from the app's flow reaches the app with a code;
// c. a password sign-in waits at the challenge and the key answers it: a code;
// d. a response made on another origin of the same RP ID (localhost) is posted to the real
//    page: refused, no code;
// e. a clone of the key (same private key, counter back at 0) signs in: refused, no code.
//
// Input: AUTHIO_MFA_TEST (JSON): shots, base, project, email, password, app_callback, state,
// code_challenge. Output: one JSON line on stdout.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import http from "node:http";
import path from "node:path";

const cfg = JSON.parse(process.env.AUTHIO_MFA_TEST);
const prefix = `${cfg.base}/p/${cfg.project}`;
const flow = new URLSearchParams({
  redirect_uri: cfg.app_callback,
  state: cfg.state,
  code_challenge: cfg.code_challenge,
  code_challenge_method: "S256",
});
const signinUrl = `${prefix}/signin?${flow}`;

// Another origin on the same RP ID: http://localhost:{other port}, an empty page.
const other = http.createServer((_req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end("<!doctype html><title>elsewhere</title><p>elsewhere</p>");
});
await new Promise((resolve) => other.listen(0, "127.0.0.1", resolve));
const otherOrigin = `http://localhost:${other.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const out = {};
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  // The app's callback is not served: answer it in the browser, and count its visits.
  const appHits = [];
  const escaped = cfg.app_callback.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  await context.route(new RegExp(`^${escaped}`), (r) =>
    r.fulfill({ status: 200, contentType: "text/plain", body: "app" }),
  );
  context.on("request", (r) => {
    if (r.url().startsWith(cfg.app_callback)) appHits.push(r.url());
  });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  const shot = (name) => page.screenshot({ path: path.join(cfg.shots, `${name}.png`), fullPage: true });
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable", { enableUI: false });
  const authenticator = async () =>
    (
      await cdp.send("WebAuthn.addVirtualAuthenticator", {
        options: {
          protocol: "ctap2",
          transport: "internal",
          hasResidentKey: true,
          hasUserVerification: true,
          isUserVerified: true,
          automaticPresenceSimulation: true,
        },
      })
    ).authenticatorId;
  const credentials = async (id) => (await cdp.send("WebAuthn.getCredentials", { authenticatorId: id })).credentials;
  let key = await authenticator();
  const credentialOf = async (id) => {
    const list = await credentials(id);
    assert.equal(list.length, 1, "one credential on the authenticator");
    return list[0];
  };
  // The page's visible error, if any.
  const pageError = async () => {
    const box = page.locator("#form-error");
    if (await box.count()) return (await box.textContent()).trim();
    const script = page.locator("#webauthn-error:not([hidden])");
    if (await script.count()) return (await script.textContent()).trim();
    return null;
  };
  // The page after a form post: the app's callback, or the page the post answered with.
  // (The callback is a redirect of the post: seen as a request, whether or not its page loads.)
  const landed = (postPath) => {
    const toApp = page.waitForRequest((r) => r.url().startsWith(cfg.app_callback), { timeout: 30000 });
    const answered = page.waitForURL((u) => u.pathname === postPath, { timeout: 30000 });
    toApp.catch(() => {});
    answered.catch(() => {});
    return Promise.race([toApp.then((r) => r.url()), answered.then(() => null)]);
  };
  // Click the page's key button; the page posts its form: either the app's callback is
  // reached (its code) or a page answers the post (its error).
  const ceremony = async (button, postPath) => {
    const before = appHits.length;
    const posted = page.waitForResponse(
      (r) => r.request().method() === "POST" && new URL(r.url()).pathname === postPath,
      { timeout: 30000 },
    );
    const settled = landed(postPath);
    await page.click(`button:has-text('${button}')`);
    const resp = await posted;
    const hit = (await settled) || appHits.slice(before)[0];
    if (hit) {
      const back = new URL(hit);
      assert.equal(back.searchParams.get("state"), cfg.state);
      return { code: back.searchParams.get("code"), status: resp.status() };
    }
    return { code: null, status: resp.status(), error: await pageError(), url: page.url() };
  };

  // a. Registration on the security page, after the password sign-in it sends to.
  out.step = "registration";
  const registration = (out.registration = {});
  page.on("request", (r) => {
    if (r.method() === "POST" && new URL(r.url()).pathname === `/p/${cfg.project}/account/security/webauthn`) {
      const sent = JSON.parse(new URLSearchParams(r.postData()).get("credential"));
      registration.sent_keys = Object.keys(sent);
      registration.sent_response_keys = Object.keys(sent.response || {});
      registration.sent = sent;
    }
  });
  await page.goto(`${prefix}/account/security`);
  assert.match(page.url(), /\/signin\?return_to=/, "sent to sign in");
  await page.fill("#email", cfg.email);
  await page.fill("#password", cfg.password);
  await Promise.all([page.waitForURL(/\/account\/security$/), page.click("form[action$='/signin'] button[type=submit]")]);
  await shot("mfa-security-empty");
  const added = page.waitForResponse(
    (r) => r.request().method() === "POST" && r.url().endsWith("/account/security/webauthn"),
  );
  const addedPage = landed(`/p/${cfg.project}/account/security/webauthn`);
  await page.click("button:has-text('Add a passkey or security key')");
  registration.status = (await added).status();
  await addedPage;
  const codes = await page.locator("ul.codes li").allTextContents();
  registration.recovery_codes = codes.length;
  await shot("mfa-recovery-codes");
  assert.equal(codes.length, 10, `recovery codes: ${await pageError()}`);
  await Promise.all([
    page.waitForURL(/\/(account\/security|mfa)$/),
    page.click("button:has-text('I have saved them: continue')"),
  ]);
  // The session predates the factor: the security page may ask for it first (step-up), and
  // the new key answers.
  registration.step_up_after_enrol = page.url().endsWith("/mfa");
  if (registration.step_up_after_enrol) {
    await shot("mfa-security-step-up");
    const settled = page.waitForURL(/\/account\/security$/);
    await page.click("button:has-text('Use your passkey or security key')");
    await settled;
  }
  const rows = await page.locator("table.factors tr").allTextContents();
  registration.factors = rows.map((t) => t.replace(/\s+/g, " ").trim());
  assert.equal(rows.length, 1, "one factor listed");
  await shot("mfa-security-key");
  let cred = await credentialOf(key);
  registration.credential = { id: cred.credentialId, sign_count: cred.signCount, rp_id: cred.rpId };
  assert.equal(cred.rpId, "localhost");

  // b. A passkey sign-in from the app's flow.
  out.step = "passkey_signin";
  await context.clearCookies();
  await page.goto(signinUrl);
  await shot("mfa-signin");
  out.passkey_signin = await ceremony("Sign in with a passkey", `/p/${cfg.project}/passkey`);
  out.passkey_signin.sign_count = (await credentialOf(key)).signCount;
  assert.ok(out.passkey_signin.code, `the app got a code: ${out.passkey_signin.error}`);

  // c. The password, then the key as the second factor.
  out.step = "second_factor";
  await context.clearCookies();
  await page.goto(signinUrl);
  await page.fill("#email", cfg.email);
  await page.fill("#password", cfg.password);
  await Promise.all([page.waitForURL(/\/mfa$/), page.click("form[action$='/signin'] button[type=submit]")]);
  await shot("mfa-challenge");
  out.second_factor = await ceremony("Use your passkey or security key", `/p/${cfg.project}/mfa/webauthn`);
  out.second_factor.sign_count = (await credentialOf(key)).signCount;
  assert.ok(out.second_factor.code, `the app got a code: ${out.second_factor.error}`);

  // d. A response made on another origin (same RP ID), posted to the real page.
  out.step = "wrong_origin";
  const wrong = (out.wrong_origin = { origin: otherOrigin });
  await page.goto(signinUrl);
  const csrf = await page.inputValue("form[data-webauthn='get'] input[name=csrf]");
  const started = await page.evaluate(
    async ({ url, csrf }) => {
      const r = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ csrf }),
      });
      if (!r.ok) throw new Error(`options: ${r.status} ${await r.text()}`);
      return r.json();
    },
    { url: `${prefix}/passkey/options`, csrf },
  );
  cred = await credentialOf(key);
  await page.goto(`${otherOrigin}/`);
  const there = await credentials(key).catch((e) => ({ error: String(e) }));
  wrong.authenticator_kept = Array.isArray(there) && there.length === 1;
  let elsewhere = key;
  if (!wrong.authenticator_kept) {
    // The authenticator did not follow the page: the same credential on a new one here.
    elsewhere = await authenticator();
    await cdp.send("WebAuthn.addCredential", { authenticatorId: elsewhere, credential: cred });
  }
  const made = await page.evaluate(async (o) => {
    const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    const pk = o.publicKey || o;
    const publicKey = {
      ...pk,
      challenge: dec(pk.challenge),
      allowCredentials: (pk.allowCredentials || []).map((c) => ({ ...c, id: dec(c.id) })),
    };
    const c = await navigator.credentials.get({ publicKey });
    return { origin: location.origin, json: c.toJSON() };
  }, started.options);
  assert.equal(made.origin, otherOrigin);
  wrong.client_origin = JSON.parse(
    Buffer.from(made.json.response.clientDataJSON, "base64url").toString("utf8"),
  ).origin;
  wrong.sign_count = (await credentialOf(elsewhere)).signCount;
  await page.goto(signinUrl);
  await shot("mfa-wrong-origin-before");
  const before = appHits.length;
  const refused = page.waitForResponse(
    (r) => r.request().method() === "POST" && new URL(r.url()).pathname === `/p/${cfg.project}/passkey`,
  );
  const refusedPage = landed(`/p/${cfg.project}/passkey`);
  await page.evaluate(
    ({ ceremony, credential }) => {
      const form = document.querySelector("form[data-webauthn='get']");
      form.querySelector("input[name=ceremony]").value = ceremony;
      form.querySelector("input[name=credential]").value = credential;
      form.submit();
    },
    { ceremony: started.ceremony, credential: JSON.stringify(made.json) },
  );
  wrong.status = (await refused).status();
  const wrongHit = (await refusedPage) || appHits[before];
  await shot("mfa-wrong-origin");
  wrong.code = wrongHit ? new URL(wrongHit).searchParams.get("code") : null;
  wrong.error = await pageError();
  assert.equal(wrong.code, null, "no code for a response made elsewhere");
  assert.ok(wrong.error, "an error is shown");
  if (elsewhere !== key) {
    await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: elsewhere });
  }

  // e. A clone: the same credential on another authenticator, its counter back at 0.
  out.step = "cloned";
  const cloned = (out.cloned = {});
  cred = await credentialOf(key);
  cloned.original_sign_count = cred.signCount;
  await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId: key });
  key = await authenticator();
  await cdp.send("WebAuthn.addCredential", { authenticatorId: key, credential: { ...cred, signCount: 0 } });
  await context.clearCookies();
  await page.goto(signinUrl);
  Object.assign(cloned, await ceremony("Sign in with a passkey", `/p/${cfg.project}/passkey`));
  cloned.clone_sign_count = (await credentialOf(key)).signCount;
  await shot("mfa-cloned");
  assert.equal(cloned.code, null, "no code for a clone");
  assert.match(cloned.error || "", /counter/, "the page says why");

  out.step = "done";
  console.log(JSON.stringify(out));
} catch (e) {
  console.error("[mfa test]", e.stack || String(e));
  console.log(JSON.stringify(out));
  process.exitCode = 1;
} finally {
  await browser.close();
  other.close();
}
