// Drives assets/ui/passkey.js in Debian's chromium with a virtual WebAuthn authenticator
// (Chrome DevTools Protocol), against the test server of tests/passkeys_browser.rs, which
// runs the real ceremonies of src/authn/passkey.rs. Usage: node passkeys.mjs BASE_URL (or
// TOLLGATE_PASSKEYS_URL=BASE_URL).
// Prints one line per step; exits non-zero on the first failure.
import { join } from "node:path";
import { launch, runScenario, virtualAuthenticator } from "./chromium.mjs";

const base = process.argv[2] || process.env.TOLLGATE_PASSKEYS_URL;
if (!base) {
  console.error("usage: node passkeys.mjs BASE_URL");
  process.exit(2);
}

function check(condition, what) {
  if (!condition) {
    throw new Error(`failed: ${what}`);
  }
  console.log(`ok: ${what}`);
}

async function statusAfterClick(page, selector) {
  await page.click(selector);
  await page.waitForSelector("#status[data-state='error']", { timeout: 30_000 });
  return page.textContent("#status");
}

await runScenario(async () => {
  const { context, page } = await launch();
  page.setDefaultTimeout(30_000);
  const { cdp, authenticatorId } = await virtualAuthenticator(context, page);

  // Base64url helpers round-trip every byte value.
  await page.goto(`${base}/`);
  const roundTrip = await page.evaluate(() => {
    const bytes = new Uint8Array(256).map((_, i) => i);
    const text = window.tollgatePasskey.toBase64url(bytes.buffer);
    const back = new Uint8Array(window.tollgatePasskey.fromBase64url(text));
    return { text, same: back.length === 256 && back.every((b, i) => b === i) };
  });
  check(roundTrip.same && !/[+/=]/.test(roundTrip.text), "base64url helpers round-trip 256 byte values");

  // Register: the answer names no redirect, so data-redirect is followed.
  await page.fill("#passkey-name", "Virtual authenticator");
  await Promise.all([page.waitForURL(/\/done\?after=register$/), page.click("#register")]);
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  check(credentials.length === 1, "the authenticator holds one credential");
  check(credentials[0].isResidentCredential, "a discoverable credential (residentKey preferred)");
  check(credentials[0].rpId === "localhost", "for relying party id localhost");

  // Registering the same authenticator again: excluded, and said so.
  await page.goto(`${base}/`);
  const again = await statusAfterClick(page, "#register");
  check(/already holds a passkey/.test(again), `a second registration is refused: "${again}"`);

  // Sign in without a username (discoverable credential); the answer's redirect is followed.
  await page.goto(`${base}/`);
  await Promise.all([page.waitForURL(/\/done\?user=ann$/), page.click("#sign-in")]);
  check(true, "signed in without a username");

  // Sign in with a username (allowCredentials lists the passkey).
  await page.goto(`${base}/`);
  await page.fill("#username", "ann");
  await Promise.all([page.waitForURL(/\/done\?user=ann$/), page.click("#sign-in")]);
  check(true, "signed in with a username");

  // The server's refusal is shown as it says it (a wrong CSRF token).
  await page.goto(`${base}/`);
  const csrf = await statusAfterClick(page, "#sign-in-bad-csrf");
  check(csrf === "CSRF token missing or wrong", `a server error is shown: "${csrf}"`);

  // The person cancels (the authenticator answers nothing until the ceremony times out).
  await cdp.send("WebAuthn.setUserVerified", { authenticatorId, isUserVerified: false });
  await cdp.send("WebAuthn.setAutomaticPresenceSimulation", { authenticatorId, enabled: false });
  await page.goto(`${base}/`);
  const cancelled = await statusAfterClick(page, "#sign-in");
  check(/cancelled or timed out/.test(cancelled), `a cancelled ceremony is explained: "${cancelled}"`);

  // A browser without WebAuthn.
  const bare = await context.newPage();
  await bare.addInitScript(() => {
    delete window.PublicKeyCredential;
  });
  await bare.goto(`${base}/`);
  const unsupported = await statusAfterClick(bare, "#sign-in");
  check(/does not support passkeys/.test(unsupported), `no WebAuthn is explained: "${unsupported}"`);
  if (process.env.TOLLGATE_SCREENSHOTS) {
    await bare.screenshot({ path: join(process.env.TOLLGATE_SCREENSHOTS, "passkeys-unsupported.png") });
  }
  console.log("every passkey browser check passed");
});
